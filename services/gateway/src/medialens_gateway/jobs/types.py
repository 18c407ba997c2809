"""`/v1/job-types`: the catalogue of job types, with the JSON Schemas of their params and results."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from medialens_gateway.deps import CurrentTenant
from medialens_gateway.envelope import ok
from medialens_gateway.openapi import Envelope, JobType, Page, errors
from medialens_gateway.pagination import Cursor, Limit, listed_page
from medialens_shared.contracts import JOB_TYPES

router = APIRouter(prefix="/v1/job-types", tags=["jobs"], responses=errors(401, 422, 500))


@router.get(
    "", summary="The job types, their services and their schemas", response_model=Envelope[Page[JobType]]
)
async def list_job_types(_: CurrentTenant, limit: Limit = 50, cursor: Cursor = None) -> JSONResponse:
    items = [
        {
            "name": spec.name,
            "service": spec.service,
            "description": spec.description,
            "accepts": sorted(kind.value for kind in spec.accepts),
            "params_schema": spec.params.model_json_schema(),
            "result_schema": spec.result_schema(),
        }
        for spec in JOB_TYPES.values()
    ]
    chosen, following = listed_page(items, key="name", limit=limit, cursor=cursor)
    return ok({"items": chosen, "next_cursor": following})
