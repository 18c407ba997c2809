"""The MediaLens REST gateway, and the operator's processes and tools beside it (relay, keys, dead letters).

`medialens_shared` is imported first: its import quiets a third-party warning that importing `svcs`
(below, in every module of this package that serves) would print on every start.
"""

import medialens_shared  # noqa: F401 - imported for its warning filter, before svcs
