"""`/v1/job-types`: the catalogue of job types with their services and JSON Schemas."""

from __future__ import annotations

import httpx

from medialens_video.thumbnails import thumbnail_times
from tests.fixtures.stack import Stack

from ..conftest import EnvelopeCheck


async def test_catalogue_lists_types_services_and_schemas(
    api: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """The catalogue lists video.probe, audio.probe and data.profile with their service and schemas."""
    items = envelope(await api.get("/v1/job-types"), status=200)["data"]["items"]
    by_name = {item["name"]: item for item in items}
    assert {"video.probe", "audio.probe", "data.profile"} <= set(by_name)
    assert by_name["video.probe"]["service"] == "video"
    assert by_name["audio.probe"]["service"] == "audio"
    assert by_name["data.profile"]["service"] == "data"
    for item in items:
        assert item["description"]
        assert item["params_schema"]["type"] == "object"
        assert item["result_schema"]["type"] == "object"
        # API.md: every result document carries these (the schemas left them out).
        common = {"job_id", "type", "input_file_id", "created_at"}
        assert common <= set(item["result_schema"]["properties"]), item["name"]
        assert common <= set(item["result_schema"]["required"]), item["name"]
    assert by_name["data.profile"]["params_schema"]["properties"]["format"]["enum"] == [
        "auto", "csv", "parquet", "jsonl"
    ]  # fmt: skip
    assert by_name["video.probe"]["params_schema"]["additionalProperties"] is False
    assert {"format", "video", "audio"} <= set(by_name["video.probe"]["result_schema"]["properties"])
    assert {"row_count", "column_count", "columns"} <= set(
        by_name["data.profile"]["result_schema"]["properties"]
    )
    assert by_name["video.probe"]["accepts"] == ["video"]
    assert by_name["data.profile"]["accepts"] == ["table"]


async def test_catalogue_needs_a_key(stack: Stack, envelope: EnvelopeCheck) -> None:
    """The catalogue answers 401 without a key."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stack.asgi), base_url="http://g"
    ) as client:
        envelope(await client.get("/v1/job-types"), status=401, error_code="UNAUTHORIZED")


async def test_thumbnails_count_default_is_the_count_the_service_applies(
    api: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """video.thumbnails' params schema gives `count` the default the service applies without one (10)."""
    items = envelope(await api.get("/v1/job-types"), status=200)["data"]["items"]
    schema = next(item for item in items if item["name"] == "video.thumbnails")["params_schema"]
    applied = len(thumbnail_times(60.0, count=None, every_s=None))
    assert schema["properties"]["count"]["default"] == applied == 10


async def test_the_catalogue_pages_as_every_list_does(
    api: httpx.AsyncClient, envelope: EnvelopeCheck
) -> None:
    """`limit` and `cursor` work on the catalogue as API.md has every list take them (it gave all 12
    types whatever they said, and 200 for a limit of 0 or a cursor it never gave out)."""
    everything = envelope(await api.get("/v1/job-types", params={"limit": 200}), status=200)["data"]
    assert everything["next_cursor"] is None
    names: list[str] = []
    cursor = None
    while True:
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = envelope(await api.get("/v1/job-types", params=params), status=200)["data"]
        assert len(page["items"]) <= 5
        names += [item["name"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [item["name"] for item in everything["items"]]
    assert len(names) > 5
    for params in ({"limit": 0}, {"limit": "abc"}, {"cursor": "garbage"}, {"cursor": "bmFtZXxub3BlLmpvYg"}):
        envelope(await api.get("/v1/job-types", params=params), status=422, error_code="VALIDATION_ERROR")
