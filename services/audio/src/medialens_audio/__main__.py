"""`medialens-audio`: the audio analysis service."""

from __future__ import annotations

from medialens_audio.handlers import HANDLERS
from medialens_shared.worker import serve


def main() -> None:
    serve("audio", HANDLERS)


if __name__ == "__main__":
    main()
