"""Checks on a job's `callback_url` at submission: `https://` only, and never a private address.

The host is resolved here, so a public name pointing at a private, loopback, link-local or metadata address
is refused too (delivery resolves again and checks again: a name can change between the two).

The URL must also be one httpx sends as written: no control character or whitespace (which `urlsplit`
quietly drops or keeps but httpx refuses or percent-encodes), and a host the resolver takes (valid IDNA,
labels of 1 to 63 characters). That holds even where private addresses are allowed and nothing is resolved
here: a URL accepted here that cannot be sent would only fail at delivery, long after the submitter left.
`parse_callback_url` is the one reading of the URL; the dispatcher uses it too, so both see the same host.

Resolving (`addresses_of`, here and in the relay's dispatcher) must let a slow name delay only its own
submissions and deliveries. `socket.getaddrinfo` blocks its thread for as long as the resolver takes (10 to
30 s for a name server that never answers), and an `asyncio.timeout` around the await gives up waiting,
not the thread. Run in the loop's default executor (what `loop.getaddrinfo` does: 6 threads on 2 cores;
libuv's pool of 4 under uvloop), a few callbacks on such names held every thread: a healthy receiver on an
IP literal failed its tries "TimeoutError" with nothing sent, another tenant's valid callback was refused
"did not resolve within 5 s", and the relay's own database and broker host names queued behind them. So:

- an IP-literal host is never resolved: its address is the literal itself, nothing to wait for;
- names are resolved on threads of their own (`RESOLVER_THREADS`), never the loop's default executor, so
  that whatever else uses that executor never waits on a callback's name server; daemon threads, so that a
  stopping process does not wait for a lookup that hangs;
- one lookup of a name is in flight at a time, shared by every submission and delivery asking for it
  meanwhile: a tenant's hundred jobs on one hanging name take one thread, not a hundred, and a try retried
  after its timeout waits on the same lookup rather than taking another thread;
- a lookup still queued when the last one waiting for it has given up is dropped, not run later for nobody.

It takes `RESOLVER_THREADS` distinct hanging names at once to make other names wait; IP literals and the
default executor never do. Answers are not cached: each submission and each try sees the resolver's answer
of the moment, and every address it gives is checked (and, in the dispatcher, connected to as checked).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import socket
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from medialens_shared.errors import RequestValidationFailed

#: Seconds the resolution of a callback host may take before the submission is refused.
RESOLVE_TIMEOUT_S = 5.0


#: Threads resolving callback host names, the process's only ones to do so (see the module's docstring). A
#: thread waiting on a name server costs little; this many distinct names hanging at once before another
#: name's lookup queues.
RESOLVER_THREADS = 32


class BadCallbackURL(ValueError):
    """A callback_url that cannot be sent to as written; the message says why, to the submitter."""


def _refuse(message: str) -> RequestValidationFailed:
    return RequestValidationFailed(
        message, details=[{"loc": ["body", "callback_url"], "msg": message, "type": "value_error"}]
    )


def is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def parse_callback_url(url: str, *, allow_http: bool) -> httpx.URL:
    """`url` as httpx sends it: an absolute URL of an allowed scheme whose host (`raw_host`, ASCII, IDNA
    already applied) a resolver takes; `BadCallbackURL` saying why not."""
    schemes = ("https", "http") if allow_http else ("https",)
    if any(char.isspace() or not char.isprintable() for char in url):
        raise BadCallbackURL("callback_url must not contain control characters or whitespace.")
    try:
        _ = urlsplit(url).port  # raises for a port that is not a number in 0..65535 (httpx takes 99999)
        parsed = httpx.URL(url)
    except (ValueError, httpx.InvalidURL) as exc:  # an unclosed IPv6 bracket, a bad port, a bad IDNA name
        raise BadCallbackURL(f"callback_url is not a valid URL ({exc}).") from exc
    if parsed.scheme not in schemes or not parsed.raw_host:
        raise BadCallbackURL(f"callback_url must be an absolute {' or '.join(schemes)}:// URL.")
    host = parsed.raw_host.decode("ascii")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host.encode("idna")  # what getaddrinfo does with it: refuses an empty or too long label
        except UnicodeError as exc:
            raise BadCallbackURL(f"callback_url's host {host!r} is not a valid host name.") from exc
    return parsed


@dataclass(eq=False, slots=True)
class _Lookup:
    """One resolution of a name, running or queued, and how many callers wait for it."""

    future: Future[list[str]]
    waiters: int = 0


class _Resolvers:
    """Runs the lookups submitted, up to `threads` at once on daemon threads, the rest queued in their order.

    Not a `ThreadPoolExecutor`: the interpreter joins its threads at exit, and a thread stuck on a name
    server that never answers held a stopping gateway or relay for the resolver's whole timeout (10 to 30 s,
    past Kubernetes' grace period: the pod killed mid-drain). A lookup nobody waits for matters to no one at
    exit. A thread is started for a lookup when fewer than `threads` run, and runs the queued ones after it
    until none is left; no thread idles, so there is no count of idle threads to get wrong."""

    def __init__(self, threads: int) -> None:
        self._threads = threads
        self._running = 0
        self._queued: deque[tuple[Future[list[str]], Callable[[], list[str]]]] = deque()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[str], list[str]], host: str) -> Future[list[str]]:
        future: Future[list[str]] = Future()
        call = functools.partial(fn, host)
        with self._lock:
            if self._running == self._threads:
                self._queued.append((future, call))
                return future
            self._running += 1
        try:
            threading.Thread(
                target=self._run, args=(future, call), name="callback-resolver", daemon=True
            ).start()
        except BaseException:
            # No thread (a pids limit): raised, as an executor does, and its slot given back (it stayed
            # taken for ever, and with `threads` such failures no lookup ran again).
            with self._lock:
                self._running -= 1
            raise
        return future

    def _run(self, future: Future[list[str]], call: Callable[[], list[str]]) -> None:
        while True:
            if future.set_running_or_notify_cancel():  # False: dropped while queued, nobody waits for it
                try:
                    future.set_result(call())
                except BaseException as exc:  # handed to the callers, as an executor does
                    future.set_exception(exc)
            with self._lock:
                if not self._queued:
                    self._running -= 1
                    return
                future, call = self._queued.popleft()


_resolver = _Resolvers(RESOLVER_THREADS)
_lookups: dict[str, _Lookup] = {}  # by host name, while in flight
_lookups_lock = threading.RLock()  # reentrant: cancelling a queued lookup runs `_forget` in the same thread


def _resolve(host: str) -> list[str]:
    """Blocking, on a resolver thread: `host`'s distinct addresses in the resolver's order."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(sockaddr[0]) for *_, sockaddr in infos))


def _forget(host: str, lookup: _Lookup, _done: object = None) -> None:
    """The lookup ended (or was dropped): the next caller starts a new one."""
    with _lookups_lock:
        if _lookups.get(host) is lookup:
            del _lookups[host]


def _pass_on(
    loop: asyncio.AbstractEventLoop, answer: asyncio.Future[list[str]], done: Future[list[str]]
) -> None:
    """The lookup's outcome to one caller, on its loop. Not `asyncio.wrap_future`: a caller cancelled (its
    timeout) would cancel the lookup the others wait for; nor shielded, which leaves the outcome of a lookup
    nobody waits for any more unretrieved ("Future exception was never retrieved" in the log). Here a
    caller gone is simply not answered."""

    def settle() -> None:
        if answer.done():
            return
        if done.cancelled():
            answer.cancel()
        elif (exc := done.exception()) is not None:
            answer.set_exception(exc)
        else:
            answer.set_result(done.result())

    with contextlib.suppress(RuntimeError):  # the caller's loop closed meanwhile: nobody to tell
        loop.call_soon_threadsafe(settle)


async def addresses_of(url: httpx.URL) -> list[str]:
    """The distinct addresses `url`'s host resolves to, in the resolver's order; the one resolution of a
    callback host, at submission and at delivery. An IP literal is its own address, with no lookup; a name
    is resolved on this module's resolver threads, one lookup per name at a time (the module's docstring
    says why). Cancelling the caller (a timeout) leaves the lookup to any other caller waiting for it."""
    host = url.raw_host.decode("ascii")
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    with _lookups_lock:
        lookup = _lookups.get(host)
        if lookup is None:
            lookup = _lookups[host] = _Lookup(_resolver.submit(_resolve, host))
            lookup.future.add_done_callback(functools.partial(_forget, host, lookup))
        lookup.waiters += 1
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[list[str]] = loop.create_future()
    lookup.future.add_done_callback(functools.partial(_pass_on, loop, answer))
    try:
        return await answer
    finally:
        with _lookups_lock:
            lookup.waiters -= 1
            if lookup.waiters == 0:
                lookup.future.cancel()  # only if still queued: a running lookup ends and is forgotten


async def check_callback_url(url: str, *, allow_http: bool, allow_private: bool) -> None:
    try:
        parsed = parse_callback_url(url, allow_http=allow_http)
    except BadCallbackURL as exc:
        raise _refuse(str(exc)) from exc
    if allow_private:
        return
    host = parsed.raw_host.decode("ascii")
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT_S):  # a slow resolver must not hold the submission
            addresses = await addresses_of(parsed)
    except (socket.gaierror, UnicodeError) as exc:  # UnicodeError: a name IDNA refuses, e.g. "a..b"
        raise _refuse(f"callback_url's host {host!r} does not resolve.") from exc
    except TimeoutError as exc:
        message = f"callback_url's host {host!r} did not resolve within {RESOLVE_TIMEOUT_S:g} s."
        raise _refuse(message) from exc
    if not all(is_public(address) for address in addresses):
        raise _refuse(
            f"callback_url's host {host!r} is or resolves to a non-public address; "
            "webhooks are only sent to public addresses."
        )
