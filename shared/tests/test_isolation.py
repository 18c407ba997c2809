"""A job's CPU part in a child process (`medialens_shared.isolation`): results, errors, progress, a crash,
a cancel, and the runner choosing it for the rerun of a job whose worker died."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import pytest

from medialens_shared.errors import JobCancelled, MediaDecodeError, UnsupportedInput
from medialens_shared.isolation import run_in_child


def _never() -> bool:
    return False


def add(a: int, b: int) -> tuple[int, int]:
    return a + b, os.getpid()


def count_up(steps: int, report: Callable[[float, str], None]) -> str:
    for step in range(steps):
        report(step / steps, f"step {step}")
        time.sleep(0.3)
    return "counted"


def refuse(reason: str) -> None:
    raise UnsupportedInput(reason)


def crash() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)


def linger(pid_file: Path) -> None:
    pid_file.write_text(str(os.getpid()))
    time.sleep(60)


def unpicklable() -> object:
    return threading.Lock()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_the_result_comes_back_from_another_process() -> None:
    value, pid = run_in_child(add, (2, 3), report=lambda *_: None, abandoned=_never)
    assert value == 5
    assert pid != os.getpid()


def test_progress_reaches_the_parents_report() -> None:
    seen: list[tuple[float, str]] = []

    class Job:  # `report` crosses as a bound method of the job's context, as `ctx.report` does
        def report(self, fraction: float, message: str) -> None:
            seen.append((fraction, message))

    job = Job()
    work = partial(count_up, 3, report=job.report)
    assert run_in_child(work, (), report=job.report, abandoned=_never) == "counted"
    assert seen == [(0.0, "step 0"), (1 / 3, "step 1"), (2 / 3, "step 2")]


def test_the_childs_error_is_raised_in_the_parent_with_its_type() -> None:
    with pytest.raises(UnsupportedInput, match="not a video"):
        run_in_child(refuse, ("not a video",), report=lambda *_: None, abandoned=_never)


def test_a_child_killed_by_a_signal_fails_with_a_decode_error() -> None:
    with pytest.raises(MediaDecodeError, match="SIGSEGV"):
        run_in_child(crash, (), report=lambda *_: None, abandoned=_never)


def test_giving_up_kills_the_child_at_once(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    asked_at: list[float] = []

    def asked() -> bool:  # once the child runs the work
        if not asked_at and pid_file.exists():
            asked_at.append(time.monotonic())
        return bool(asked_at)

    with pytest.raises(JobCancelled):
        run_in_child(linger, (pid_file,), report=lambda *_: None, abandoned=asked)
    assert time.monotonic() - asked_at[0] < 1
    assert not _alive(int(pid_file.read_text()))


def test_a_result_that_does_not_pickle_is_an_error_not_a_hang() -> None:
    with pytest.raises(RuntimeError, match="could not be sent back"):
        run_in_child(unpicklable, (), report=lambda *_: None, abandoned=_never)
