"""A job's CPU part in a child process, for a job whose previous attempt died with its worker.

A decoder that crashes on an input (a segfault in a native library, memory blown by a crafted file) takes
its whole worker process down, and with it every other job that worker was running. The reaper brings the
job back (counted as an attempt), and without more care its next attempt would crash the next worker, and
the next, until `max_attempts`: one poison input would cost several workers and the healthy jobs beside
them. So the rerun of a job whose worker died runs its CPU part (`JobContext.run_cpu`) here, in a child
process: if the child dies by a signal the job fails at once with `MEDIA_DECODE_ERROR` and its message goes
to the dead letters (for an operator to requeue once the decoder is mended); the worker and its other jobs
carry on. A job whose worker died for another reason (a `kill -9`, a lost node) runs the same way and
succeeds, a fork slower (and the first such job of a worker a fork server's start slower).

Work whose memory no limit of its library's own can bound runs here on every attempt, with a cap on its
child's heap (`memory_cap`, the kernel's `RLIMIT_DATA`): a few bytes of SQL ask DuckDB for gigabytes its
`memory_limit` does not count (one value's list or string: `SELECT list_sum(range(300000000))` took 15 GB),
and a worker the kernel kills for memory takes the jobs beside it down, each of them an attempt. Past the
cap an allocation fails, and the work fails as its library reports that (DuckDB: an out-of-memory error).

Why `forkserver` children, and not forks of the worker nor `concurrent.futures.ProcessPoolExecutor`: the
worker has threads (other jobs' decoders, database and broker clients), and a fork copies whatever lock one
of them held, FFmpeg's own included, so a forked decoder can hang. A fork server is a fresh, single-threaded
process, started at the first isolated job with the work's module imported, that forks each child in a few
milliseconds (a `spawn` pays the imports, a few tenths of a second, every time: felt when a crash sends all
the jobs that died beside it through here). A pool cannot kill its child on a cancel nor carry progress
back while the work runs.

The work crosses as a pickle: `func` and `args` must pickle (module-level functions and `functools.partial`
of them, as every handler passes), with one exception: the job's `ctx.report` becomes, in the child, a
reporter that sends progress back through a pipe. A cancel or the job's end kills the child.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import io
import multiprocessing
import os
import pickle
import resource
import signal
import sys
import time
import types
from collections.abc import Callable
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from medialens_shared.errors import JobCancelled, MediaDecodeError

_REPORT = "report"
#: Progress messages sent from the child at most this often (the parent throttles again for Redis).
_REPORT_EVERY_S = 0.25
#: How often the parent looks for a cancel while it waits for the child.
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1
#: The child's `oom_score_adj`: the most (a process may raise its own without privilege), so that the
#: kernel's OOM killer takes it before the worker.
_OOM_SCORE_ADJ = 1000


class DecoderCrashed(MediaDecodeError):
    """The job's child process died by a signal: its input crashes the decoder, or (`SIGKILL`) the kernel
    killed it for memory."""


def start_server(func: Callable[..., Any]) -> None:
    """Start the fork server now, importing what children running `func` need, rather than at the first
    child: a service whose every job of a type runs in a child (`data.query`) calls it at its start, so
    that its first such job does not wait for the imports (a couple of seconds for a console script)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_modules_of(func))
    forkserver.ensure_running()


def run_in_child(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    report: Callable[[float, str], None],
    abandoned: Callable[[], bool],
    memory_cap: int | None = None,
) -> Any:
    """`func(*args)` in a new process; blocks, so call it from a thread.

    `report` (a job's `ctx.report`) may be among the arguments: in the child it sends progress back here.
    Raises what `func` raised; `JobCancelled` once `abandoned()` turns true or `report` raises it (the child
    is killed then); `DecoderCrashed` if the child died by a signal. `memory_cap`: the bytes of heap and
    private mappings the child may reserve (`RLIMIT_DATA`; address space reserved, not memory touched).
    """
    payload = _dumps((func, args), report)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_modules_of(func))  # heeded when the server starts, ignored after
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child_main, args=(payload, sender, memory_cap), name="isolated-job", daemon=True
    )
    child.start()
    sender.close()
    try:
        outcome = _wait(child, receiver, report=report, abandoned=abandoned)
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()
    if outcome is None:
        code = child.exitcode or 0
        if code == -signal.SIGKILL:  # nothing here sends it but a kill: the kernel's OOM killer, mostly
            raise DecoderCrashed(
                "the job's process was killed (SIGKILL), most likely for memory: this input or these "
                "parameters need more than the service has"
            )
        if code < 0:
            name = signal.Signals(-code).name
            raise DecoderCrashed(f"processing this input crashed the decoder ({name}); it is likely damaged")
        raise RuntimeError(f"the job's child process ended with exit code {code} before it answered")
    kind, value = outcome
    if kind == "error":
        raise cast(BaseException, value)
    return value


def _wait(
    child: multiprocessing.process.BaseProcess,
    receiver: Connection,
    *,
    report: Callable[[float, str], None],
    abandoned: Callable[[], bool],
) -> tuple[str, Any] | None:
    """The child's answer, forwarding its progress meanwhile; None if it died without one."""
    while True:
        if abandoned():
            child.kill()
            raise JobCancelled("cancelled on request")
        if not receiver.poll(_POLL_S):
            continue
        try:
            kind, value = receiver.recv()
        except EOFError:
            return None
        if kind == _REPORT:
            try:
                report(*value)
            except JobCancelled:
                child.kill()
                raise
        else:
            return kind, value


def _modules_of(func: Callable[..., Any]) -> list[str]:
    """What the fork server imports once rather than each child: the module of the work's function, and
    those the process's main script took its names from.

    Every child of a fork server first runs the parent's main script again (multiprocessing's
    `spawn.prepare`), and a service's console script (`medialens-data`: `from medialens_data.__main__
    import main`) imports the whole worker: 2 s a child, every child. The fork server's own preloading of
    `__main__` would spare that, but Python 3.11 never hands the server the script's path, so the modules
    the script imports from are preloaded instead, and each child finds them imported. (A service run with
    `python -m` has nothing to run again: its main module's name ends in `__main__`.)
    """
    target = func.func if isinstance(func, functools.partial) else func
    name = getattr(target, "__module__", None)
    main = sys.modules["__main__"]
    if name == "__main__":  # a service run with `python -m`: its module's own name
        spec = getattr(main, "__spec__", None)
        name = spec.name if spec is not None else None
    modules = {name} if name else set()
    for value in vars(main).values():
        module = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
        if isinstance(module, str) and module != "__main__":
            modules.add(module)
    return sorted(modules)


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, report: Callable[..., None]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._report = report

    def persistent_id(self, obj: Any) -> str | None:
        # A bound method is made anew at each attribute access, so `is` cannot find `ctx.report`; its
        # object and function can. (Never `==` here: a NumPy array would answer with an array.)
        if (
            isinstance(obj, types.MethodType)
            and isinstance(self._report, types.MethodType)
            and obj.__self__ is self._report.__self__
            and obj.__func__ is self._report.__func__
        ):
            return _REPORT
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, report: Callable[[float, str], None]) -> None:
        super().__init__(file)
        self._report = report

    def persistent_load(self, pid: Any) -> Any:
        if pid != _REPORT:
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        return self._report


def _dumps(obj: Any, report: Callable[..., None]) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, report).dump(obj)
    return buffer.getvalue()


class _PipeReport:
    """The child's `ctx.report`: progress back to the parent, a few times a second at most."""

    def __init__(self, sender: Connection) -> None:
        self._sender = sender
        self._last = 0.0

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last >= _REPORT_EVERY_S:
            self._last = now
            self._sender.send((_REPORT, (fraction, message)))


def _child_main(payload: bytes, sender: Connection, memory_cap: int | None) -> None:
    """The child: die with the parent, cap its heap, run the work, send back its result or its exception."""
    parent = os.getppid()
    # An orphaned decoder must not spin on after its worker was killed: the fork server, this process's
    # parent, exits when the worker dies, and Linux then sends this signal.
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the worker's to handle
    if memory_cap is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (memory_cap, memory_cap))
    # When the pod (or machine) runs out of memory, the kernel kills the process it scores worst: let that
    # be this child, which fails one job, rather than the worker, which holds every job beside it.
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(str(_OOM_SCORE_ADJ))
    try:
        func, args = _Unpickler(io.BytesIO(payload), _PipeReport(sender)).load()
        outcome: tuple[str, Any] = ("ok", func(*args))
    except BaseException as exc:  # every failure goes back to the parent, which raises it
        outcome = ("error", exc)
    try:
        sender.send(outcome)
    except Exception as exc:  # the result or the exception does not pickle: say so rather than vanish
        with contextlib.suppress(Exception):
            sender.send(("error", RuntimeError(f"the job's result could not be sent back: {exc}")))
    sender.close()
