"""callback_url checks at submission: https only unless allowed, and never a non-public address."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from medialens_gateway.jobs import callbacks
from medialens_gateway.jobs.callbacks import check_callback_url, is_public
from medialens_shared.errors import RequestValidationFailed
from scripts.samples import make_csv
from tests.fixtures.stack import upload

from ..conftest import EnvelopeCheck


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


async def test_a_host_whose_resolution_hangs_is_refused_in_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A resolver that does not answer (here one that sleeps: there is no slow DNS server to point at on
    this machine) costs the submission `RESOLVE_TIMEOUT_S`, then a 422 saying so, not a request held as
    long as the resolver likes."""
    monkeypatch.setattr(callbacks, "RESOLVE_TIMEOUT_S", 0.2)
    loop = asyncio.get_running_loop()

    async def hanging(*_args: object, **_kwargs: object) -> list[object]:
        await asyncio.sleep(60)
        return []

    monkeypatch.setattr(loop, "getaddrinfo", hanging)
    started = time.monotonic()
    with pytest.raises(RequestValidationFailed, match=r"did not resolve within 0\.2 s"):
        await check_callback_url("https://slow.example/hook", allow_http=False, allow_private=False)
    assert time.monotonic() - started < 5
