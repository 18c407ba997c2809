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
import signal
import sys
import time
import types
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast

from medialens_shared.errors import JobCancelled, MediaDecodeError

_REPORT = "report"
#: Progress messages sent from the child at most this often (the parent throttles again for Redis).
_REPORT_EVERY_S = 0.25
#: How often the parent looks for a cancel while it waits for the child.
_POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


class DecoderCrashed(MediaDecodeError):
    """The job's child process died by a signal: its input crashes the decoder."""


def run_in_child(
    func: Callable[..., Any],
    args: tuple[Any, ...],
    *,
    report: Callable[[float, str], None],
    abandoned: Callable[[], bool],
) -> Any:
    """`func(*args)` in a new process; blocks, so call it from a thread.

    `report` (a job's `ctx.report`) may be among the arguments: in the child it sends progress back here.
    Raises what `func` raised; `JobCancelled` once `abandoned()` turns true or `report` raises it (the child
    is killed then); `DecoderCrashed` if the child died by a signal.
    """
    payload = _dumps((func, args), report)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_modules_of(func))  # heeded when the server starts, ignored after
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(payload, sender), name="isolated-job", daemon=True)
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
    """The module of the work's function, for the fork server to import once rather than each child."""
    target = func.func if isinstance(func, functools.partial) else func
    name = getattr(target, "__module__", None)
    if name == "__main__":  # a service run with `python -m`: its module's own name
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        name = spec.name if spec is not None else None
    return [name] if name else []


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


def _child_main(payload: bytes, sender: Connection) -> None:
    """The child: die with the parent, run the work, send back its result or its exception."""
    parent = os.getppid()
    # An orphaned decoder must not spin on after its worker was killed: the fork server, this process's
    # parent, exits when the worker dies, and Linux then sends this signal.
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the worker's to handle
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
