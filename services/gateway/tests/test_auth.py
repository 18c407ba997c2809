"""API keys: who may call, and a tenant never seeing another tenant's files or jobs."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from scripts.samples import make_csv, make_video
from tests.fixtures.servers import TENANT_KEYS
from tests.fixtures.stack import Stack, result_of, run_job, submit, upload

from .conftest import EnvelopeCheck


async def test_no_key_is_401(stack: Stack, envelope: EnvelopeCheck) -> None:
    """A /v1 call without any key answers 401 UNAUTHORIZED, saying how to send one."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.asgi), base_url="http://g") as c:
        body = envelope(await c.get("/v1/files"), status=401, error_code="UNAUTHORIZED")
    assert "Bearer" in body["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer not-a-key"},
        {"X-API-Key": "not-a-key"},
        {"Authorization": "Basic a2V5LWE6"},
        {"Authorization": "Bearer    "},
    ],
)
async def test_unknown_or_malformed_key_is_401(
    stack: Stack, envelope: EnvelopeCheck, headers: dict[str, str]
) -> None:
    """An unknown key, or no usable key, answers 401 UNAUTHORIZED on /v1 routes."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.asgi), base_url="http://g", headers=headers
    ) as client:
        envelope(await client.get("/v1/jobs"), status=401, error_code="UNAUTHORIZED")


@pytest.mark.parametrize("key", [None, "not-a-key"])
@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", b"{not json"), ("application/json", b'{"type": 5}'), ("text/plain", b"{}")],
)
async def test_a_submission_without_a_valid_key_is_401_whatever_its_body(
    stack: Stack, envelope: EnvelopeCheck, key: str | None, content_type: str, body: bytes
) -> None:
    """A job submission is let in before its body is judged: without a valid key, a body that does not
    parse or validate answers 401, as API.md has every /v1 call without a key (one that does not parse
    answered 422); with a valid key, 422."""
    headers = {"Content-Type": content_type} | ({"Authorization": f"Bearer {key}"} if key else {})
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.asgi), base_url="http://g") as c:
        envelope(
            await c.post("/v1/jobs", content=body, headers=headers), status=401, error_code="UNAUTHORIZED"
        )
        headers["Authorization"] = f"Bearer {TENANT_KEYS['tenant-a']}"
        envelope(
            await c.post("/v1/jobs", content=body, headers=headers), status=422, error_code="VALIDATION_ERROR"
        )


@pytest.mark.parametrize(
    ("authorization", "said"),
    [
        (TENANT_KEYS["tenant-a"], "holds no scheme before its value"),
        ("Basic a2V5LWE6", "scheme is 'Basic', which holds no API key"),
        ("Bearer   ", "names the Bearer scheme but holds no key"),
    ],
)
async def test_an_authorization_header_without_a_bearer_key_is_told_apart_from_none(
    stack: Stack, envelope: EnvelopeCheck, authorization: str, said: str
) -> None:
    """A key sent in the wrong form is not called missing: the message says what the header held instead
    (the key itself not repeated), and how to send one."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.asgi),
        base_url="http://g",
        headers={"Authorization": authorization},
    ) as client:
        body = envelope(await client.get("/v1/jobs"), status=401, error_code="UNAUTHORIZED")
    assert said in body["message"]
    assert "Authorization: Bearer <key>" in body["message"]
    assert TENANT_KEYS["tenant-a"] not in body["message"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TENANT_KEYS['tenant-a']}"},
        {"Authorization": f"bearer {TENANT_KEYS['tenant-a']}"},
        {"X-API-Key": TENANT_KEYS["tenant-a"]},
    ],
)
async def test_bearer_and_x_api_key_are_both_accepted(
    stack: Stack, envelope: EnvelopeCheck, headers: dict[str, str]
) -> None:
    """A valid key is accepted as a Bearer token (any case of the scheme) or as X-API-Key."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.asgi), base_url="http://g", headers=headers
    ) as client:
        body = envelope(await client.get("/v1/files", params={"limit": 1}), status=200)
    assert isinstance(body["data"]["items"], list)


@pytest.mark.parametrize(
    ("method", "path", "headers", "challenge"),
    [
        ("GET", "/v1/files", {}, 'Bearer realm="MediaLens"'),
        ("GET", "/v1/jobs/0123", {}, 'Bearer realm="MediaLens"'),  # a hot path, past FastAPI
        ("POST", "/v1/jobs", {"X-API-Key": "not-a-key"}, 'Bearer realm="MediaLens", error="invalid_token"'),
        (
            "GET",
            "/v1/jobs",
            {"Authorization": "Bearer not-a-key"},
            'Bearer realm="MediaLens", error="invalid_token"',
        ),
        ("HEAD", "/v1/files", {}, 'Bearer realm="MediaLens"'),
    ],
)
async def test_a_401_challenges_for_a_bearer_token(
    stack: Stack, method: str, path: str, headers: dict[str, str], challenge: str
) -> None:
    """Every 401 carries `WWW-Authenticate` (RFC 9110 §15.5.2) naming the Bearer scheme, the form of the key
    that is an HTTP authentication scheme, with `error="invalid_token"` when a key was sent but refused."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.asgi), base_url="http://g", headers=headers
    ) as client:
        json = {"type": "data.profile", "file_id": "x"} if method == "POST" else None
        response = await client.request(method, path, json=json)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == challenge


async def test_operations_need_no_key(stack: Stack) -> None:
    """Health and metrics answer without a key."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.asgi), base_url="http://g") as c:
        assert (await c.get("/health/live")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200


async def test_another_tenants_file_and_job_answer_404(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """Tenant B gets 404 (never 403) for every read, delete and action on tenant A's file and job."""
    path = tmp_path / "a.csv"
    make_csv(path, rows=20)
    job = await run_job(api, "data.profile", path)
    assert job["status"] == "succeeded", job
    file_id = job["file_id"]
    other = stack.client("tenant-b")
    for method, url in [
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
        ("GET", f"/v1/jobs/{job['id']}"),
        ("GET", f"/v1/jobs/{job['id']}/result"),
        ("GET", f"/v1/jobs/{job['id']}/events"),
        ("POST", f"/v1/jobs/{job['id']}/cancel"),
    ]:
        body = envelope(await other.request(method, url), status=404, error_code="NOT_FOUND")
        assert "tenant" in body["message"], (method, url)
    response = await other.post("/v1/jobs", json={"type": "data.profile", "file_id": file_id})
    envelope(response, status=404, error_code="NOT_FOUND")
    # A's things are untouched by B's attempts.
    assert (await api.get(f"/v1/files/{file_id}")).status_code == 200
    assert (await api.get(f"/v1/jobs/{job['id']}")).json()["data"]["status"] == "succeeded"


async def test_the_files_a_job_makes_are_its_tenants_alone(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path, envelope: EnvelopeCheck
) -> None:
    """Artifacts (API.md: files too, owned by the job's tenant): a conversion's output and thumbnails are
    in tenant A's file list and readable by A, and answer 404 to tenant B, whose list holds none of them."""
    table, video = tmp_path / "a.csv", tmp_path / "a.mp4"
    make_csv(table, rows=20)
    make_video(video, duration_s=1.0, fps=10, width=96, height=64)
    converted = await run_job(api, "data.convert", table, params={"to": "parquet"})
    thumbnails = await run_job(api, "video.thumbnails", video, params={"count": 2})
    assert (converted["status"], thumbnails["status"]) == ("succeeded", "succeeded")
    made = [(await result_of(api, converted["id"]))["file_id"]] + [
        image["file_id"] for image in (await result_of(api, thumbnails["id"]))["thumbnails"]
    ]
    assert len(made) == 3
    mine = {
        item["id"] for item in (await api.get("/v1/files", params={"limit": 200})).json()["data"]["items"]
    }
    other = stack.client("tenant-b")
    theirs = {
        item["id"] for item in (await other.get("/v1/files", params={"limit": 200})).json()["data"]["items"]
    }
    for file_id in made:
        assert file_id in mine
        assert file_id not in theirs
        assert (await api.get(f"/v1/files/{file_id}/content")).status_code == 200
        for url in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
            envelope(await other.get(url), status=404, error_code="NOT_FOUND")


async def test_another_tenants_lists_do_not_hold_my_items(
    stack: Stack, api: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Files and jobs tenant A made never appear in tenant B's lists."""
    path = tmp_path / "mine.csv"
    make_csv(path, rows=5)
    file_id = await upload(api, path)
    job = await submit(api, "data.profile", file_id, labels={"owner": "a"})
    other = stack.client("tenant-b")
    b_files = (await other.get("/v1/files", params={"limit": 200})).json()["data"]["items"]
    b_jobs = (await other.get("/v1/jobs", params={"limit": 200})).json()["data"]["items"]
    assert file_id not in {item["id"] for item in b_files}
    assert job["id"] not in {item["id"] for item in b_jobs}
    b_labelled = (await other.get("/v1/jobs", params={"label": "owner:a"})).json()["data"]["items"]
    assert b_labelled == []
    a_files = (await api.get("/v1/files", params={"limit": 200})).json()["data"]["items"]
    assert file_id in {item["id"] for item in a_files}


def test_the_key_cache_forgets_a_key_after_its_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified key is served from the cache until its TTL ends, then looked up again."""
    from medialens_gateway import auth

    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    cache = auth.KeyCache(ttl_s=30, size=2)
    tenant = auth.Tenant(id="t", webhook_secret="s")
    cache.put("h1", tenant)
    assert cache.get("h1") == tenant
    now[0] += 31
    assert cache.get("h1") is None
    cache.put("h1", tenant)
    cache.put("h2", tenant)
    cache.put("h3", tenant)  # over its size the cache starts afresh
    assert cache.get("h1") is None
    assert cache.get("h3") == tenant
