"""`medialens-data`: the data analysis service."""

from __future__ import annotations

from medialens_data.handlers import HANDLERS
from medialens_shared.worker import serve


def main() -> None:
    serve("data", HANDLERS)


if __name__ == "__main__":
    main()
