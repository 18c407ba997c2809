"""callback_url checks at submission: https only unless allowed, and never a non-public address."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from medialens_gateway.jobs import callbacks
from medialens_gateway.jobs.callbacks import check_callback_url, is_public
from medialens_shared.errors import RequestValidationFailed
from scripts.samples import make_csv
from tests.fixtures.stack import Stack, upload

from ..conftest import EnvelopeCheck, HangingDNS


@pytest.fixture
async def csv_file(api: httpx.AsyncClient, tmp_path: Path) -> str:
    path = tmp_path / "t.csv"
    make_csv(path, rows=5)
    return await upload(api, path)


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34/hook", "ftp://93.184.216.34/x", "https:///nohost", "hook"]
)
async def test_only_https_when_http_is_not_allowed(url: str) -> None:
    """Without allow_http, an http://, other-scheme or host-less callback_url is refused naming https."""
    with pytest.raises(RequestValidationFailed) as caught:
        await check_callback_url(url, allow_http=False, allow_private=False)
    assert "https://" in caught.value.message
    assert caught.value.details == [
        {"loc": ["body", "callback_url"], "msg": caught.value.message, "type": "value_error"}
    ]


@pytest.mark.parametrize(
    "url",
    ["https://[::1/hook", "https://example.com:99999/hook", "https://example.com:abc/", "https://a..b/"],
)
async def test_a_malformed_callback_url_is_a_validation_error_not_a_crash(url: str) -> None:
    """An unclosed IPv6 bracket, a port out of range or not a number, a name IDNA refuses: 422, not 500."""
    with pytest.raises(RequestValidationFailed) as caught:
        await check_callback_url(url, allow_http=False, allow_private=False)
    assert caught.value.details is not None
    assert caught.value.details[0]["loc"] == ["body", "callback_url"]


async def test_https_public_literal_passes_the_checker() -> None:
    """An https:// URL on a public IP literal passes the checker."""
    await check_callback_url("https://93.184.216.34:8443/hook", allow_http=False, allow_private=False)


async def test_http_is_accepted_when_allowed() -> None:
    """With allow_http, an http:// URL on a public IP literal passes."""
    await check_callback_url("http://8.8.8.8/hook", allow_http=True, allow_private=False)


async def test_private_addresses_pass_when_explicitly_allowed() -> None:
    """With allow_private, a loopback callback is not refused (no resolution needed)."""
    await check_callback_url("https://127.0.0.1/hook", allow_http=False, allow_private=True)


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("192.168.1.1", False),
        ("127.0.0.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("224.0.0.1", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
    ],
)
def test_is_public_classifies_addresses(address: str, public: bool) -> None:
    """Only global unicast addresses (IPv4-mapped ones by their IPv4) count as public."""
    assert is_public(address) is public


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.5/hook",
        "http://192.168.0.10:8080/hook",
        "https://127.0.0.1/hook",
        "https://[::1]/hook",
        "http://169.254.169.254/latest/meta-data/",
        "https://[fe80::1]/hook",
        "https://localhost/hook",
        "http://LOCALHOST:9000/hook",
        "https://[::ffff:127.0.0.1]/hook",
    ],
)
async def test_non_public_callback_is_refused_at_submission(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck, url: str
) -> None:
    """A callback_url on a private, loopback, link-local or metadata address (or localhost) answers 422."""
    response = await api.post(
        "/v1/jobs", json={"type": "data.profile", "file_id": csv_file, "callback_url": url}
    )
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert body["data"]["details"][0]["loc"] == ["body", "callback_url"]
    assert "non-public" in body["message"]
    listed = (await api.get("/v1/jobs", params={"limit": 200})).json()["data"]["items"]
    assert all(job["file_id"] != csv_file for job in listed)


async def test_unresolvable_callback_host_is_refused(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """A callback_url whose host does not resolve answers 422."""
    response = await api.post(
        "/v1/jobs",
        json={"type": "data.profile", "file_id": csv_file, "callback_url": "https://nowhere.invalid/hook"},
    )
    body = envelope(response, status=422, error_code="VALIDATION_ERROR")
    assert "does not resolve" in body["message"]


async def test_public_ip_literal_callback_is_accepted(
    api: httpx.AsyncClient, csv_file: str, envelope: EnvelopeCheck
) -> None:
    """A callback_url on a public IP literal is accepted with 202."""
    response = await api.post(
        "/v1/jobs",
        json={"type": "data.profile", "file_id": csv_file, "callback_url": "https://93.184.216.34/hook"},
    )
    job = envelope(response, status=202)["data"]
    assert job["status"] == "queued"


async def test_a_host_whose_resolution_hangs_is_refused_in_time(
    monkeypatch: pytest.MonkeyPatch, hanging_dns: HangingDNS
) -> None:
    """A resolver that does not answer (a `getaddrinfo` blocked: there is no slow DNS server to point at on
    this machine) costs the submission `RESOLVE_TIMEOUT_S`, then a 422 saying so, not a request held as
    long as the resolver likes."""
    monkeypatch.setattr(callbacks, "RESOLVE_TIMEOUT_S", 0.2)
    hanging_dns.hanging.add("slow.example")
    started = time.monotonic()
    with pytest.raises(RequestValidationFailed, match=r"did not resolve within 0\.2 s"):
        await check_callback_url("https://slow.example/hook", allow_http=False, allow_private=False)
    assert time.monotonic() - started < 5


#: Threads of the loop's default executor (what `loop.getaddrinfo` used): this many hanging lookups held it.
DEFAULT_EXECUTOR_THREADS = min(32, (os.cpu_count() or 1) + 4)


async def test_an_ip_literal_callback_is_never_resolved(hanging_dns: HangingDNS) -> None:
    """An IP-literal host is its own address, checked with no lookup. It was resolved like a name (asyncio's
    getaddrinfo always goes through the executor), so it waited behind whatever hung there and was refused
    "did not resolve within 5 s"."""
    hanging_dns.hanging.update({"93.184.216.34", "::ffff:10.0.0.1"})
    started = time.monotonic()
    await check_callback_url("https://93.184.216.34/hook", allow_http=False, allow_private=False)
    with pytest.raises(RequestValidationFailed, match="non-public"):
        await check_callback_url("https://[::ffff:10.0.0.1]/hook", allow_http=False, allow_private=False)
    assert time.monotonic() - started < 1
    assert hanging_dns.calls == {}


async def test_names_whose_dns_hangs_hold_neither_other_names_nor_the_default_executor(
    hanging_dns: HangingDNS,
) -> None:
    """Submissions with callbacks on names whose name server never answers, more of them than the loop's
    default executor has threads, and many on one name: meanwhile another name resolves at once, and the
    default executor stays free. Their lookups held that executor's threads for as long as the resolver
    took (a timeout stops the wait, not the thread): everything else waited behind them. Each hanging name
    is looked up once however many wait for it; each check ends at its own timeout."""
    names = [f"hooks-{i}.slow-dns.example" for i in range(DEFAULT_EXECUTOR_THREADS + 2)]
    hanging_dns.hanging.update(names)
    hanging_dns.answers["hooks.customer-b.example"] = "93.184.215.14"
    urls = [f"https://{name}/hook" for name in names] + [f"https://{names[0]}/hook-{i}" for i in range(20)]
    checks = [
        asyncio.create_task(check_callback_url(url, allow_http=False, allow_private=False)) for url in urls
    ]
    await asyncio.sleep(0.3)  # every hanging lookup under way
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(1):
            await check_callback_url(
                "https://hooks.customer-b.example/hook", allow_http=False, allow_private=False
            )
            assert await loop.run_in_executor(None, int, "7") == 7
        assert hanging_dns.calls[names[0]] == 1
        assert all(hanging_dns.calls[name] == 1 for name in names)
    finally:
        hanging_dns.release()
        outcomes = await asyncio.gather(*checks, return_exceptions=True)
    assert all(isinstance(outcome, RequestValidationFailed) for outcome in outcomes)


async def test_submissions_with_hanging_callback_names_refuse_no_other_tenants_callback(
    stack: Stack, csv_file: str, tmp_path: Path, hanging_dns: HangingDNS, envelope: EnvelopeCheck
) -> None:
    """Through the API, the auditor's case: while tenant A's submissions wait on a callback name whose
    name server never answers, tenant B's job with a callback on a name that resolves at once is accepted
    (202). It was refused 422 "did not resolve within 5 s": A's lookups held the resolver threads."""
    # A name of this test's own: its job runs on the stack, whose webhook then looks the name up, in a
    # test after this one (which would count that lookup as its own).
    good_host = f"hooks.customer-b-{uuid.uuid4().hex[:8]}.example"
    hanging_dns.hanging.add("hooks.slow-dns.example")
    hanging_dns.answers[good_host] = "93.184.215.14"
    path = tmp_path / "b.csv"
    make_csv(path, rows=5)
    api_a, api_b = stack.client("tenant-a"), stack.client("tenant-b")
    file_b = await upload(api_b, path)
    slow = {"type": "data.profile", "file_id": csv_file, "callback_url": "https://hooks.slow-dns.example/h"}
    hogs = [asyncio.create_task(api_a.post("/v1/jobs", json=slow)) for _ in range(DEFAULT_EXECUTOR_THREADS)]
    await asyncio.sleep(0.3)
    try:
        good = {
            "type": "data.profile",
            "file_id": file_b,
            "callback_url": f"https://{good_host}/h",
        }
        started = time.monotonic()
        response = await api_b.post("/v1/jobs", json=good)
        envelope(response, status=202)
        assert time.monotonic() - started < callbacks.RESOLVE_TIMEOUT_S / 2
    finally:
        hanging_dns.release()
        refused = await asyncio.gather(*hogs)
    assert {response.status_code for response in refused} == {422}


async def _until(condition: Callable[[], bool]) -> None:
    """Polls: `condition` reads state other threads change, which no event of this loop signals."""
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, "the resolver did not get there in time"
        await asyncio.sleep(0.005)


async def test_a_queued_lookup_whose_callers_all_gave_up_is_dropped_unrun(
    monkeypatch: pytest.MonkeyPatch, hanging_dns: HangingDNS
) -> None:
    """With every resolver thread held by a hanging name (one thread here), a lookup queued behind it whose
    last caller gave up never runs: it would take a thread, later, for nobody. The next caller on that name
    starts a lookup of its own, which resolves once a thread is free. No timing: each step waits for the
    state it needs."""
    hanging_dns.hanging.add("hooks.slow-dns.example")
    hanging_dns.answers["hooks.customer-b.example"] = "93.184.215.14"
    resolver = callbacks._Resolvers(1)
    monkeypatch.setattr(callbacks, "_resolver", resolver)
    monkeypatch.setattr(callbacks, "_lookups", {})
    slow = asyncio.create_task(callbacks.addresses_of(httpx.URL("https://hooks.slow-dns.example/h")))
    await _until(lambda: hanging_dns.calls["hooks.slow-dns.example"] == 1)  # it holds the one thread
    given_up = asyncio.create_task(callbacks.addresses_of(httpx.URL("https://hooks.customer-b.example/h")))
    await _until(lambda: "hooks.customer-b.example" in callbacks._lookups)
    queued = callbacks._lookups["hooks.customer-b.example"]
    given_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await given_up
    assert queued.future.cancelled()
    assert "hooks.customer-b.example" not in callbacks._lookups
    hanging_dns.release()
    with pytest.raises(OSError, match="Temporary failure"):
        await slow
    assert await callbacks.addresses_of(httpx.URL("https://hooks.customer-b.example/h")) == ["93.184.215.14"]
    assert hanging_dns.calls == {"hooks.slow-dns.example": 1, "hooks.customer-b.example": 1}


async def test_the_resolver_runs_at_most_its_threads_at_once_and_the_rest_when_one_is_free(
    hanging_dns: HangingDNS,
) -> None:
    """Two threads, four lookups: two run, two wait, and run once a thread is free; every thread ends
    when nothing is left to run. (Which of two threads calls first is the scheduler's: compared as sets.)"""
    hanging_dns.hanging.update({"a.example", "b.example"})
    hanging_dns.answers.update({"c.example": "93.184.215.3", "d.example": "93.184.215.4"})
    resolver = callbacks._Resolvers(2)
    hosts = ("a.example", "b.example", "c.example", "d.example")
    futures = [resolver.submit(callbacks._resolve, host) for host in hosts]
    await _until(lambda: hanging_dns.calls["a.example"] == hanging_dns.calls["b.example"] == 1)
    assert set(hanging_dns.calls) == {"a.example", "b.example"}
    assert not any(future.done() for future in futures)
    hanging_dns.release()
    answers = await asyncio.gather(*map(asyncio.wrap_future, futures[2:]))
    assert answers == [["93.184.215.3"], ["93.184.215.4"]]
    await _until(lambda: resolver._running == 0)


async def test_the_resolvers_queued_lookups_run_in_the_order_they_came(hanging_dns: HangingDNS) -> None:
    """One thread: the lookups queued behind a hanging one run in their order once it ends."""
    hanging_dns.hanging.add("a.example")
    hanging_dns.answers.update({f"{name}.example": "93.184.215.3" for name in "cdef"})
    resolver = callbacks._Resolvers(1)
    order: list[str] = []

    def resolve(host: str) -> list[str]:
        order.append(host)  # one thread: its calls come in the order it takes the lookups
        return callbacks._resolve(host)

    futures = [resolver.submit(resolve, f"{name}.example") for name in "acdef"]
    await _until(lambda: hanging_dns.calls["a.example"] == 1)
    hanging_dns.release()
    await asyncio.gather(*map(asyncio.wrap_future, futures[1:]))
    assert order == ["a.example", "c.example", "d.example", "e.example", "f.example"]


def test_a_resolver_thread_that_could_not_start_gives_its_slot_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread that cannot start (a pod at its pids limit) fails the lookup, as an executor's submit does,
    and leaves its slot free: it stayed counted, and once the pool's size of starts had failed no lookup
    ever ran again (found by review)."""
    real_start = threading.Thread.start
    failures = [RuntimeError("can't start new thread")]

    def start(self: threading.Thread) -> None:
        if failures and self.name == "callback-resolver":  # not another thread this process starts meanwhile
            raise failures.pop()
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    resolver = callbacks._Resolvers(1)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        resolver.submit(lambda host: [host], "first.example")
    assert resolver._running == 0
    later = resolver.submit(lambda host: ["93.184.215.14"], "second.example")
    assert later.result(timeout=5) == ["93.184.215.14"]


#: A process that gives up, at 0.3 s, on a callback name whose lookup hangs 20 s, then exits.
_EXIT_WHILE_A_LOOKUP_HANGS = """
import asyncio, socket, time
import httpx
real = socket.getaddrinfo
def hanging(host, *args, **kwargs):
    if host == "hooks.slow-dns.example":
        time.sleep(20)
    return real(host, *args, **kwargs)
socket.getaddrinfo = hanging
from medialens_gateway.jobs import callbacks
async def main():
    try:
        async with asyncio.timeout(0.3):
            await callbacks.addresses_of(httpx.URL("https://hooks.slow-dns.example/h"))
    except TimeoutError:
        print("gave up")
asyncio.run(main())
"""


async def test_a_hanging_lookup_does_not_hold_the_process_at_exit() -> None:
    """A gateway or relay stopping while a callback name's lookup hangs exits at once: the resolver's
    threads are daemons. On a `ThreadPoolExecutor`'s, which the interpreter joins at exit, it waited for
    the lookup's end (here 20 s; a resolver's timeout is 10 to 30 s, past Kubernetes' grace period)."""
    started = time.monotonic()
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _EXIT_WHILE_A_LOOKUP_HANGS, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(child.communicate(), 30)
    assert (child.returncode, out.strip()) == (0, b"gave up")
    assert time.monotonic() - started < 10
