"""The OpenAPI document covers the whole public surface of API.md, operations included."""

from __future__ import annotations

import re

import httpx

from tests.fixtures.servers import TENANT_KEYS
from tests.fixtures.stack import Stack, api_client

EXPECTED = {
    "/v1/files": {"get", "post"},
    "/v1/files/{file_id}": {"get", "delete"},
    "/v1/files/{file_id}/content": {"get"},
    "/v1/jobs": {"get", "post"},
    "/v1/jobs/{job_id}": {"get"},
    "/v1/jobs/{job_id}/cancel": {"post"},
    "/v1/jobs/{job_id}/result": {"get"},
    "/v1/jobs/{job_id}/events": {"get"},
    "/v1/job-types": {"get"},
    "/health/live": {"get"},
    "/health/ready": {"get"},
    "/metrics": {"get"},
}


async def test_openapi_lists_every_path_of_the_contract(api: httpx.AsyncClient) -> None:
    """/openapi.json lists every path and method of API.md."""
    response = await api.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["info"]["title"] == "MediaLens"
    paths = document["paths"]
    for path, methods in EXPECTED.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))


async def test_openapi_documents_uploads_and_streams(api: httpx.AsyncClient) -> None:
    """The upload takes multipart and raw bodies, a raw one named by an `X-Filename` header (API.md; a
    client generated from the document could not send it), and events are documented as an event stream."""
    paths = (await api.get("/openapi.json")).json()["paths"]
    upload = paths["/v1/files"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/octet-stream"} <= set(upload)
    named = [p for p in paths["/v1/files"]["post"]["parameters"] if p.get("name") == "X-Filename"]
    assert [(p["in"], p["required"], p["schema"]) for p in named] == [("header", False, {"type": "string"})]
    events = paths["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]["content"]
    assert "text/event-stream" in events
    submit = paths["/v1/jobs"]["post"]
    assert any(p["name"] == "Idempotency-Key" for p in submit["parameters"])


async def test_docs_page_answers(api: httpx.AsyncClient) -> None:
    """/docs answers 200 with an HTML page pointing at the OpenAPI document."""
    response = await api.get("/docs")
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "/openapi.json" in response.text


async def test_the_api_key_is_declared_exactly_where_it_is_enforced(
    stack: Stack, api: httpx.AsyncClient
) -> None:
    """The document declares the bearer and X-API-Key schemes, and an operation requires one of them exactly
    when calling it without a key answers 401."""
    document = (await api.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert {"type": "http", "scheme": "bearer"}.items() <= schemes["bearerAuth"].items()
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= schemes["apiKeyHeader"].items()
    either_key = [{"bearerAuth": []}, {"apiKeyHeader": []}]
    async with api_client(stack.asgi, key=None) as anonymous:
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                response = await anonymous.request(method.upper(), re.sub(r"\{[^}]+\}", "x", path))
                declared = operation.get("security") == either_key
                assert declared is (response.status_code == 401), (method, path, response.status_code)
                if declared:  # the 401 and its challenge header are documented as sent
                    assert "WWW-Authenticate" in operation["responses"]["401"]["headers"], (method, path)
                    assert response.headers["www-authenticate"].startswith("Bearer "), (method, path)
        by_header = await anonymous.get("/v1/job-types", headers={"X-API-Key": TENANT_KEYS["tenant-a"]})
    assert by_header.status_code == 200
    assert (await api.get("/v1/job-types")).request.headers["authorization"].startswith("Bearer ")


async def test_the_document_describes_answers_as_they_are_sent(api: httpx.AsyncClient) -> None:
    """Every envelope schema requires the six keys every answer has, every operation takes and every
    response carries X-Request-ID, the content route documents its 416, and the metrics are text."""
    document = (await api.get("/openapi.json")).json()
    six = {"success", "data", "message", "error_code", "timestamp", "request_id"}
    envelopes = {name: s for name, s in document["components"]["schemas"].items() if "Envelope" in name}
    assert "ErrorEnvelope" in envelopes
    for name, schema in envelopes.items():
        assert set(schema.get("required", ())) == six, name
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            assert {"$ref": "#/components/parameters/X-Request-ID"} in operation["parameters"], (method, path)
            for status, response in operation["responses"].items():
                assert "X-Request-ID" in response.get("headers", {}), (method, path, status)
    content = document["paths"]["/v1/files/{file_id}/content"]["get"]["responses"]
    assert content["416"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorEnvelope")
    assert "text/plain" in document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]


async def test_params_schemas_are_the_ones_the_catalogue_serves(api: httpx.AsyncClient) -> None:
    """Each job type's params schema is a component of the document, the same as /v1/job-types serves
    (video.thumbnails' `count` defaulting to 10 in both), named from the job request's `params`."""
    schemas = (await api.get("/openapi.json")).json()["components"]["schemas"]
    catalogue = (await api.get("/v1/job-types")).json()["data"]["items"]
    for item in catalogue:
        name = item["params_schema"]["title"]
        assert schemas[name] == item["params_schema"], item["name"]
        assert f"`{item['name']}`: {name}" in schemas["JobRequest"]["properties"]["params"]["description"]
    assert schemas["VideoThumbnailsParams"]["properties"]["count"]["default"] == 10
    for table in ("DataProfileParams", "DataConvertParams", "DataQueryParams"):  # a CSV's `header`, optional
        header = schemas[table]["properties"]["header"]
        assert (header["anyOf"], header["default"], "header" in schemas[table].get("required", [])) == (
            [{"type": "boolean"}, {"type": "null"}],
            None,
            False,
        )


async def test_created_and_accepted_answers_document_their_location(api: httpx.AsyncClient) -> None:
    """A submission (202, or 200 for an Idempotency-Key's replay, a job object either way) and an upload
    (201) name the new resource in a Location header, as they send it."""
    document = (await api.get("/openapi.json")).json()
    submit = document["paths"]["/v1/jobs"]["post"]["responses"]
    upload = document["paths"]["/v1/files"]["post"]["responses"]
    for response in (submit["202"], submit["200"], upload["201"]):
        assert "Location" in response["headers"]
    assert (
        submit["200"]["content"]["application/json"]["schema"]
        == submit["202"]["content"]["application/json"]["schema"]
    )


async def test_job_types_are_documented_as_the_values_they_may_take(api: httpx.AsyncClient) -> None:
    """A job request's `type` and the list's `?type=` filter (repeatable) are enums of the catalogue's
    types (a client generated from the document offers them), `callback_url` a URI; an unknown type is
    still answered by the service, with the types it knows."""
    document = (await api.get("/openapi.json")).json()
    catalogue = [item["name"] for item in (await api.get("/v1/job-types")).json()["data"]["items"]]
    request = document["components"]["schemas"]["JobRequest"]["properties"]
    assert sorted(request["type"]["enum"]) == sorted(catalogue)
    assert {"type": "string", "maxLength": 2048, "format": "uri"} in request["callback_url"]["anyOf"]
    (listing,) = (p for p in document["paths"]["/v1/jobs"]["get"]["parameters"] if p.get("name") == "type")
    repeated = {"type": "array", "items": {"type": "string", "enum": request["type"]["enum"]}}
    assert repeated in listing["schema"]["anyOf"]
    refused = await api.post("/v1/jobs", json={"type": "video.nope", "file_id": "f"})
    assert refused.status_code == 422
    assert "video.probe" in refused.json()["data"]["details"][0]["msg"]


async def test_the_document_allows_what_the_gateway_takes_and_nothing_it_refuses(
    api: httpx.AsyncClient,
) -> None:
    """Found by schemathesis against the document: a label key outside the pattern was valid by the schema
    (`patternProperties` lets other keys through) and a 422; a download was documented as
    application/octet-stream, but comes with its stored type, and its Range header was not documented."""
    document = (await api.get("/openapi.json")).json()
    labels = document["components"]["schemas"]["JobRequest"]["properties"]["labels"]
    assert labels["propertyNames"]["pattern"] == "^[A-Za-z0-9._/-]+$"
    assert "patternProperties" not in labels
    content = document["paths"]["/v1/files/{file_id}/content"]["get"]
    for status in ("200", "206"):
        assert content["responses"][status]["content"] == {
            "*/*": {"schema": {"type": "string", "format": "binary"}}
        }
    assert "Content-Range" in content["responses"]["206"]["headers"]
    assert [p["name"] for p in content["parameters"] if p.get("in") == "header"] == [
        "Range",
        "If-Range",
        "If-None-Match",
    ]
    assert "ETag" in content["responses"]["200"]["headers"]
    assert "ETag" in content["responses"]["304"]["headers"]
    upload = document["paths"]["/v1/files"]["post"]["requestBody"]["content"]
    assert set(upload) == {"multipart/form-data", "application/octet-stream", "*/*"}
    listing = document["paths"]["/v1/jobs"]["get"]["parameters"]
    label = next(p["schema"]["anyOf"][0] for p in listing if p.get("name") == "label")
    assert label["items"]["pattern"] == "^[^:]+:"  # `?label=team` is a 422: the document says so


async def test_no_route_publishes_its_docstring(api: httpx.AsyncClient) -> None:
    """No operation carries a description: FastAPI publishes a route's docstring as one, and two routes'
    docstrings (a bug's history, for the code's readers) had gone into the public document."""
    document = (await api.get("/openapi.json")).json()
    described = [
        (method, path)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if isinstance(operation, dict) and operation.get("description")
    ]
    assert described == []
