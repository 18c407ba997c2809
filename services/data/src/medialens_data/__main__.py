"""`medialens-data`: the data analysis service.

Its imports are made in `main`, not here: every child of the fork server a query runs in runs this
process's main script again (multiprocessing's start-up of a child), and the script imports this module.
Importing the worker here made the fork server preload it all (`isolation._modules_of`), 125 MB of a second
process; the children need only what the query imports. The fork server starts at the first query (half a
second, once): a service that only profiles and converts never holds it.
"""

from __future__ import annotations


def main() -> None:
    from medialens_data.handlers import HANDLERS
    from medialens_shared.worker import serve

    serve("data", HANDLERS)


if __name__ == "__main__":
    main()
