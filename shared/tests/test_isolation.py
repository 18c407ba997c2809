"""A job's CPU part in a child process (`medialens_shared.isolation`): results, errors, progress, a crash,
a cancel, and the runner choosing it for the rerun of a job whose worker died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
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


def allocate(size: int) -> int:
    return len(bytearray(size))


def test_a_memory_cap_fails_an_allocation_past_it_in_the_child_only() -> None:
    """The child's heap is capped (`RLIMIT_DATA`): a block past the cap fails there as a MemoryError,
    raised here, while the same block without a cap, or within it, is allocated."""
    block = 512 * 2**20
    with pytest.raises(MemoryError):
        run_in_child(allocate, (block,), report=lambda *_: None, abandoned=_never, memory_cap=256 * 2**20)
    assert run_in_child(allocate, (block,), report=lambda *_: None, abandoned=_never) == block
    assert (
        run_in_child(allocate, (block,), report=lambda *_: None, abandoned=_never, memory_cap=1024 * 2**20)
        == block
    )


def oom_score_adj() -> int:
    return int(Path("/proc/self/oom_score_adj").read_text())


def killed() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_the_kernel_kills_the_child_before_the_worker_when_memory_runs_out() -> None:
    """The child's OOM score is raised to the most, so that a pod out of memory loses one job, not the
    worker with every job beside it; a child killed so fails its job saying memory is the likely cause."""
    assert run_in_child(oom_score_adj, (), report=lambda *_: None, abandoned=_never) == 1000
    assert oom_score_adj() < 1000
    with pytest.raises(MediaDecodeError, match=r"killed \(SIGKILL\), most likely for memory"):
        run_in_child(killed, (), report=lambda *_: None, abandoned=_never)


def test_children_do_not_import_again_what_a_console_script_imports(tmp_path: Path) -> None:
    """A service runs as a console script (`from medialens_data.__main__ import main`), and every child of
    the fork server runs the parent's main script again: unless the server imported its modules, each
    child imported the whole worker again (2 s a child). The script's module here counts its imports: the
    parent's, the fork server's, and none in the three children."""
    imports = tmp_path / "imports"
    (tmp_path / "service.py").write_text(
        "import os\n"
        f"with open({str(imports)!r}, 'a') as log:\n"
        "    log.write(f'{os.getpid()}\\n')\n"
        "def main() -> None:\n"
        "    from medialens_shared.isolation import run_in_child\n"
        "    for _ in range(3):\n"
        "        assert run_in_child(os.getpid, (), report=print, abandoned=lambda: False) != os.getpid()\n"
    )
    script = tmp_path / "medialens-service"  # as the console scripts of uv and pip are written
    script.write_text(
        "import sys\nfrom service import main\nif __name__ == '__main__':\n    sys.exit(main())\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=60)
    assert len(imports.read_text().split()) == 2


def test_a_result_that_does_not_pickle_is_an_error_not_a_hang() -> None:
    with pytest.raises(RuntimeError, match="could not be sent back"):
        run_in_child(unpicklable, (), report=lambda *_: None, abandoned=_never)
