"""`medialens-data`: the data analysis service."""

from __future__ import annotations

from medialens_data.handlers import HANDLERS
from medialens_shared.worker import serve


def main() -> None:
    # User SQL decides how much memory a job takes, some of it past DuckDB's own limit: see heapcap.
    serve("data", HANDLERS, heap_capped=True)


if __name__ == "__main__":
    main()
