"""`medialens-data`: the data analysis service.

Its imports are made in `main`, not here: every child of the fork server a query runs in runs this
process's main script again (multiprocessing's start-up of a child), and the script imports this module.
Importing the worker here made the fork server preload it all (`isolation._modules_of`), 125 MB of a second
process; the children need only what the query imports.
"""

from __future__ import annotations


def main() -> None:
    from medialens_data.handlers import HANDLERS
    from medialens_data.query import run_query
    from medialens_shared.isolation import start_server
    from medialens_shared.worker import serve

    start_server(run_query)  # every query runs in a child of it: started before the first one waits
    serve("data", HANDLERS)


if __name__ == "__main__":
    main()
