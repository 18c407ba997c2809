"""`python -m medialens_gateway`: the gateway, as `medialens-gateway` starts it."""

from __future__ import annotations

from medialens_gateway.main import main

if __name__ == "__main__":
    main()
