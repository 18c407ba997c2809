"""`medialens-audio`: the audio analysis service.

Its imports are made in `main`, not here: a child of the fork server a job's rerun runs in
(`medialens_shared.isolation`) runs this process's main script again, and the script imports this module;
imported here, the whole worker was preloaded into the fork server too, a second process as large as this.
"""

from __future__ import annotations


def main() -> None:
    from medialens_audio.handlers import HANDLERS
    from medialens_shared.worker import serve

    serve("audio", HANDLERS)


if __name__ == "__main__":
    main()
