"""`medialens-video`: the video analysis service."""

from __future__ import annotations

from medialens_shared.worker import serve
from medialens_video.handlers import HANDLERS


def main() -> None:
    serve("video", HANDLERS)


if __name__ == "__main__":
    main()
