"""MediaLens's core package, shared by the gateway, the relay and the services.

Importing it quiets one third-party warning before any of them is imported: `svcs` imports its FastAPI
integration whenever FastAPI is installed, which imports FastAPI's TestClient, and Starlette warns on that
import that its TestClient wants `httpx2` rather than `httpx`. Every process printed that line at start
about a test client no process uses (the tests' own filter is in pyproject.toml's pytest settings).
"""

import warnings

warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
