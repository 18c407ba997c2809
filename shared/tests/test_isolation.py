"""A job's CPU part in a child process (`medialens_shared.isolation`): results, errors, progress, a crash,
a cancel, and the runner choosing it for the rerun of a job whose worker died."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

from medialens_shared.errors import JobCancelled, MediaDecodeError, UnsupportedInput
from medialens_shared.isolation import OverMemoryCap, run_in_child


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
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


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


def fill(size: int) -> int:
    """Hold `size` bytes written (resident, not only reserved) for a moment."""
    block = b"\x01" * size
    time.sleep(0.3)
    return len(block)


def test_a_memory_cap_ends_the_child_past_it_and_only_past_it() -> None:
    """A child past its `memory_cap` (bytes resident) is ended and the job fails OverMemoryCap (an
    UNSUPPORTED_INPUT, saying the cap), while the same memory without a cap, or within it, is held."""
    block = 512 * 2**20
    with pytest.raises(OverMemoryCap, match="passed the 256 MiB one job may hold") as caught:
        run_in_child(fill, (block,), report=lambda *_: None, abandoned=_never, memory_cap=256 * 2**20)
    assert caught.value.error_code == "UNSUPPORTED_INPUT"
    assert run_in_child(fill, (block,), report=lambda *_: None, abandoned=_never) == block
    assert (
        run_in_child(fill, (block,), report=lambda *_: None, abandoned=_never, memory_cap=1024 * 2**20)
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


#: A worker as a service runs one: its own process group, a child running `linger_for` (which writes its
#: pid and its fork server's, waits for the go file, and answers), the outcome printed.
WORKER = """
import signal, sys
from pathlib import Path
from medialens_shared.isolation import run_in_child
from test_isolation import linger_for

for stop in (signal.SIGTERM, signal.SIGINT):  # a service's handlers: stop taking jobs, drain
    signal.signal(stop, lambda *_: print("worker: draining", flush=True))
try:
    print(run_in_child(linger_for, (Path(sys.argv[1]),), report=print, abandoned=lambda: False))
except Exception as exc:
    print(f"{type(exc).__name__}: {exc}")
"""


def linger_for(folder: Path) -> str:
    (folder / "pids").write_text(f"{os.getpid()} {os.getppid()}")
    while not (folder / "go").exists():
        time.sleep(0.02)
    return "answered"


@contextmanager
def worker_with_child(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:
    """A worker process running a child of `linger_for`; the worker, the child's and the fork server's
    pids. Whatever the test does, the worker's group and the child are gone afterwards."""
    script, pids = tmp_path / "worker.py", tmp_path / "pids"
    script.write_text(WORKER)
    path = os.pathsep.join([str(Path(__file__).parent), *sys.path])
    worker = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": path},
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a supervisor starts a service
    )
    child = server = 0
    try:
        deadline = time.monotonic() + 30
        while not (pids.exists() and pids.read_text()):
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child, server = map(int, pids.read_text().split())
        yield worker, child, server
    finally:
        for pid in (child, server):
            if pid and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker.communicate()


def test_a_child_dies_with_its_worker(tmp_path: Path) -> None:
    """A worker killed outright leaves no child running on (its fork server was kept alive by the child
    itself, so the parent-death signal never came, and a query ran on without its time limit)."""
    with worker_with_child(tmp_path) as (worker, child, _):
        worker.kill()
        worker.wait()
        deadline = time.monotonic() + 5
        while _alive(child):
            assert time.monotonic() < deadline, "the child outlived its worker"
            time.sleep(0.05)


def test_a_child_outlives_a_stop_signal_to_its_workers_group(tmp_path: Path) -> None:
    """A supervisor stopping the worker may signal its whole group (honcho, systemd): the worker drains,
    and its child and the fork server go on, and the child answers (both died, and the job was an
    INTERNAL_ERROR)."""
    with worker_with_child(tmp_path) as (worker, child, server):
        os.killpg(worker.pid, signal.SIGTERM)
        os.killpg(worker.pid, signal.SIGINT)
        time.sleep(0.3)
        assert _alive(child)
        assert _alive(server)
        (tmp_path / "go").touch()
        out, _ = worker.communicate(timeout=30)
        assert out.splitlines()[-1] == "answered", out


def test_a_child_whose_fork_server_is_killed_still_answers(tmp_path: Path) -> None:
    """The fork server killed while its child works: the child still answers its worker."""
    with worker_with_child(tmp_path) as (worker, _, server):
        os.kill(server, signal.SIGKILL)
        (tmp_path / "go").touch()
        out, _ = worker.communicate(timeout=30)
        assert out.splitlines()[-1] == "answered", out


def vanish() -> None:
    os._exit(3)


def test_a_child_ended_without_an_answer_nor_a_signal_is_a_bug_not_a_retry() -> None:
    """A child that exits without answering (its start-up failed, say) repeats the same way every time:
    an error, not a passing fault retried until the attempts run out."""
    with pytest.raises(RuntimeError, match="exit code 3"):
        run_in_child(vanish, (), report=lambda *_: None, abandoned=_never)


def test_a_result_that_does_not_pickle_is_an_error_not_a_hang() -> None:
    with pytest.raises(RuntimeError, match="could not be sent back"):
        run_in_child(unpicklable, (), report=lambda *_: None, abandoned=_never)
