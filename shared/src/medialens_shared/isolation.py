"""A job's CPU part in a child process: for a job whose previous attempt died with its worker, and for
work whose memory must be capped.

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
child's resident memory (`memory_cap`): a few bytes of SQL ask DuckDB for gigabytes its `memory_limit` does
not count (one value's list or string: `SELECT list_sum(range(300000000))` took 15 GB), and a worker the
kernel kills for memory takes the jobs beside it down, each of them an attempt. A thread of the child reads
its resident size every `_WATCH_S` and ends it past the cap; the job fails with `OverMemoryCap`. (The
thread needs the GIL: work holding it, such as one huge value turned into a Python object, is seen once it
lets go.) Resident memory, not the address space reserved (`RLIMIT_DATA`, tried first): allocators reserve
far more than they touch, and a sort of a wide table at DuckDB's 512MB limit, 705 MB resident, had reserved
1.5 GB and failed some runs and not others. When memory runs out anyway (the pod's), the kernel's OOM
killer takes a child first (`oom_score_adj` 1000), and its job fails saying so (`KilledForMemory`).

A child dies with its worker (a thread waits for the worker's end of the result pipe to close): a worker
killed outright (`kill -9`) leaves no query or decoder running on. It outlives a stopping worker: the fork
server and its children are started with SIGTERM and SIGINT blocked, since a supervisor stopping the worker
may signal its whole process group (honcho under `make dev`, systemd), and the worker's drain waits for the
job. A child lost with its fork server (killed meanwhile) is a passing fault, tried again.

Why `forkserver` children, and not forks of the worker nor `concurrent.futures.ProcessPoolExecutor`: the
worker has threads (other jobs' decoders, database and broker clients), and a fork copies whatever lock one
of them held, FFmpeg's own included, so a forked decoder can hang. A fork server is a fresh, single-threaded
process, started at the first child (half a second, once) with the work's modules imported, that forks
each child in a few milliseconds (a `spawn` pays the imports, a few tenths of a second,
every time: felt when a crash sends all the jobs that died beside it through here). A pool cannot kill its
child on a cancel nor carry progress back while the work runs.

The work crosses as a pickle: `func` and `args` must pickle (module-level functions and `functools.partial`
of them, as every handler passes), with one exception: the job's `ctx.report` becomes, in the child, a
reporter that sends progress back through a pipe. A cancel or the job's end kills the child.
"""

from __future__ import annotations

import contextlib
import functools
import io
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, cast

from medialens_shared.errors import JobCancelled, MediaDecodeError, TransientJobError, UnsupportedInput

_REPORT = "report"
#: Progress messages sent from the child at most this often (the parent throttles again for Redis).
_REPORT_EVERY_S = 0.25
#: How often the parent looks for a cancel while it waits for the child.
_POLL_S = 0.2
#: The child's `oom_score_adj`: the most (a process may raise its own without privilege), so that the
#: kernel's OOM killer takes it before the worker.
_OOM_SCORE_ADJ = 1000
#: How often a child with a `memory_cap` reads its resident size: memory is filled at a few GB a second,
#: so a child passes its cap by some 100 MB before it is ended (while its work lets go of the GIL).
_WATCH_S = 0.02
#: The exit code of a child that ended itself past its `memory_cap`.
_OVER_MEMORY_EXIT = 86
#: The exit code of a child that sent its outcome and ended at once (`end_child`).
_ENDED_EXIT = 87
#: The exit code multiprocessing reports for a child whose fork server is gone (it can no longer tell).
_SERVER_LOST_EXIT = 255
#: Signals a supervisor sends a whole process group when it stops the worker: the children, and the fork
#: server they come from, must outlive them until the worker's drain is done with their jobs.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
_STATM = Path("/proc/self/statm")


class DecoderCrashed(MediaDecodeError):
    """The job's child process died by a signal: its input crashes the decoder."""


class KilledForMemory(DecoderCrashed):
    """The job's child process was killed outright (`SIGKILL`): the kernel's OOM killer, most likely."""


class OverMemoryCap(UnsupportedInput):
    """The job's child process passed its `memory_cap`: its input (or its parameters) need more memory
    than the service gives one job."""


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block `_STOP_SIGNALS` in this thread meanwhile: a fork server started now inherits the mask, and so
    do the children it forks (the worker's other threads still take the signals). The resource tracker is
    started first: starting it unblocks the two signals (Python 3.11's `resource_tracker.ensure_running`
    blocks and then unblocks them around its own spawn), and the fork server's start would start it."""
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


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
    is killed then); `OverMemoryCap` past `memory_cap` (bytes resident); `KilledForMemory` if the child
    was killed outright, `DecoderCrashed` if it died by another signal; `TransientJobError` if it was lost
    with its fork server.
    """
    payload = _dumps((func, args), report)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_modules_of(func))  # heeded when the server starts, ignored after
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_child_main, args=(payload, sender, memory_cap), name="isolated-job", daemon=True
    )
    with _stop_signals_blocked():
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
        if code == _OVER_MEMORY_EXIT and memory_cap is not None:
            raise OverMemoryCap(f"its process passed the {memory_cap / 2**20:,.0f} MiB one job may hold")
        if code == -signal.SIGKILL:  # nothing here sends it but a kill: the kernel's OOM killer, mostly
            raise KilledForMemory(
                "the job's process was killed (SIGKILL), most likely for memory: this input or these "
                "parameters need more than the service has"
            )
        if code < 0:
            name = signal.Signals(-code).name
            raise DecoderCrashed(f"processing this input crashed the decoder ({name}); it is likely damaged")
        if code == _SERVER_LOST_EXIT:
            raise TransientJobError(
                "the job's child process was lost with its fork server before it answered"
            )
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
        except (EOFError, OSError):  # closed, or cut off mid-message: the child ended without an answer
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
    `spawn.prepare`): a service's console script (`medialens-data`: `from medialens_data.__main__ import
    main`) imported the whole worker, 2 s a child, every child. The fork server's own preloading of
    `__main__` would spare that, but Python 3.11 never hands the server the script's path, so the modules
    the script imports from are preloaded instead, and each child finds them imported. The services' main
    modules import the worker inside `main`, so that this preloads what the work needs and no more (the
    whole worker was 125 MB of a second process). (A service run with `python -m` has nothing to run
    again: its main module's name ends in `__main__`.)
    """
    target = func.func if isinstance(func, functools.partial) else func
    name = getattr(target, "__module__", None)
    main = sys.modules["__main__"]
    if name == "__main__":  # a service run with `python -m`: its module's own name
        spec = getattr(main, "__spec__", None)
        name = spec.name if spec is not None else None
    modules = {name} if name else set()
    for key, value in vars(main).items():
        if key.startswith("__"):  # the script's loader, spec, builtins: not what it imported
            continue
        if isinstance(value, types.ModuleType):
            modules.add(value.__name__)
        elif isinstance(value, (types.FunctionType, type)) and value.__module__ != "__main__":
            modules.add(value.__module__)
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


#: This process's end of its result pipe while it is a job's child (`_child_main`), and the lock its
#: sends take (the work's outcome, or `end_child`'s from another thread).
_child: tuple[Connection, threading.Lock] | None = None


def end_child(error: BaseException) -> None:
    """In a job's child process, from any thread: send `error` back as the work's outcome and exit now,
    whatever the work's own thread is doing (stuck in a library that heeds no interrupt). Elsewhere (the
    work run in the caller's process, as tests do) nothing: the caller waits for the work."""
    if _child is None:
        return
    sender, lock = _child
    with lock, contextlib.suppress(Exception):
        sender.send(("error", error))
    os._exit(_ENDED_EXIT)


def _child_main(payload: bytes, sender: Connection, memory_cap: int | None) -> None:
    """The child: watch the worker and its own memory, run the work, send back its result or exception."""
    global _child  # noqa: PLW0603 - set once, in the child process alone
    _child = (sender, threading.Lock())
    for stop in _STOP_SIGNALS:  # the worker's to handle (its drain waits for this job)
        signal.signal(stop, signal.SIG_IGN)
    # When the pod (or machine) runs out of memory, the kernel kills the process it scores worst: let that
    # be this child, which fails one job, rather than the worker, which holds every job beside it.
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text(str(_OOM_SCORE_ADJ))
    threading.Thread(target=_watch, args=(sender, memory_cap), name="watch", daemon=True).start()
    try:
        func, args = _Unpickler(io.BytesIO(payload), _PipeReport(sender)).load()
        outcome: tuple[str, Any] = ("ok", func(*args))
    except BaseException as exc:  # every failure goes back to the parent, which raises it
        outcome = ("error", exc)
    with _child[1]:
        try:
            sender.send(outcome)
        except Exception as exc:  # the result or the exception does not pickle: say so rather than vanish
            with contextlib.suppress(Exception):
                sender.send(("error", RuntimeError(f"the job's result could not be sent back: {exc}")))
    # `sender` stays open until the process exits: `_watch` polls it, and would read it closed as an error.


def _watch(sender: Connection, memory_cap: int | None) -> None:
    """End this child when the worker is gone (its end of the result pipe closed: the pipe's write end
    polls as an error) or, with a `memory_cap`, once its resident size passes it."""
    poller = select.poll()
    poller.register(sender.fileno(), 0)  # errors and hang-ups only, which poll always reports
    while True:
        if poller.poll(None if memory_cap is None else _WATCH_S * 1000):
            os._exit(1)  # the worker died: nobody waits for this work
        if memory_cap is not None and _resident_bytes() > memory_cap:
            os._exit(_OVER_MEMORY_EXIT)


def _resident_bytes() -> int:
    return int(_STATM.read_bytes().split()[1]) * _PAGE_BYTES
