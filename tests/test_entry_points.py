"""Every process's command line: `--help` says what it is and exits, anything else is refused, and the start
prints nothing but its own lines (a third-party deprecation warning was the first line of every start).

The processes run as `python -m <package>` as a container or an operator may start them; `--help` is read
before the settings, so these touch no server.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

#: Each process's module and a phrase of its description.
PROCESSES = {
    "medialens_gateway": "REST gateway",
    "medialens_gateway.relay": "outbox",
    "medialens_video": "video",
    "medialens_audio": "audio",
    "medialens_data": "data",
}


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "PYTHONWARNINGS"}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("module", PROCESSES)
def test_help_describes_the_process_and_prints_nothing_else(module: str) -> None:
    shown = run(module, "--help")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith(f"usage: python -m {module} [-h]")
    assert PROCESSES[module] in shown.stdout
    assert "MEDIALENS_*" in shown.stdout
    assert shown.stderr == ""


@pytest.mark.parametrize("module", PROCESSES)
def test_an_argument_is_refused(module: str) -> None:
    refused = run(module, "--now")
    assert refused.returncode == 2
    assert "unrecognized arguments: --now" in refused.stderr
