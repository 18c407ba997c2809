"""`medialens-data`: the data analysis service."""

from __future__ import annotations

from medialens_data.handlers import HANDLERS
from medialens_data.query import run_query
from medialens_shared.isolation import start_server
from medialens_shared.worker import serve


def main() -> None:
    start_server(run_query)  # every query runs in a child of it: started before the first one waits
    serve("data", HANDLERS)


if __name__ == "__main__":
    main()
