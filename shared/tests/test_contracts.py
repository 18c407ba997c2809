"""The job catalogue's own consistency, which the gateway's queries rely on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medialens_shared.contracts import (
    JOB_TYPES,
    PART_ORDER,
    AudioSilenceParams,
    DataConvertParams,
    DataProfileParams,
    DataQueryParams,
    TableParams,
    VideoScenesParams,
)


def test_every_composite_lists_its_parts_in_the_one_order_its_children_are_read_in() -> None:
    """A composite's `children` are ordered by `PART_ORDER`, one order for all composites: a composite that
    listed parts it shares with another in another order would have them read in the other's."""
    for spec in JOB_TYPES.values():
        assert [part for part in PART_ORDER if part in spec.children] == list(spec.children), spec.name


def test_params_whose_values_the_analyses_cannot_hold_are_refused() -> None:
    """A silence longer than a day (1e305 s overflowed its length in samples: an INTERNAL_ERROR where a 422
    belongs) and a cut threshold above the detector's scores (0..255: no cut could ever be found)."""
    with pytest.raises(ValidationError, match="less than or equal to 86400"):
        AudioSilenceParams(min_duration_s=1e305)
    with pytest.raises(ValidationError, match="less than or equal to 255"):
        VideoScenesParams(threshold=300.0)
    assert AudioSilenceParams(min_duration_s=86_400).min_duration_s == 86_400
    assert VideoScenesParams(threshold=255).threshold == 255
    assert VideoScenesParams.model_json_schema()["properties"]["threshold"]["default"] == 12.0


@pytest.mark.parametrize(
    ("model", "base"),
    [(DataProfileParams, {}), (DataConvertParams, {"to": "csv"}), (DataQueryParams, {"sql": "SELECT 1"})],
)
def test_a_table_jobs_header_is_for_csv_and_left_out_when_not_given(
    model: type[TableParams], base: dict[str, object]
) -> None:
    """`header` (whether a CSV's first line names its columns) is a boolean or not given; with `format`
    parquet or jsonl, which name their columns themselves, it is refused. Not given (or null), it is left
    out of the params dumped: such a job's params are stored, shown and hashed for its Idempotency-Key as
    they were before `header` existed."""
    assert "header" not in model.model_validate(base).model_dump(mode="json")
    assert "header" not in model.model_validate(base | {"header": None}).model_dump(mode="json")
    assert model.model_validate(base | {"header": False}).model_dump(mode="json")["header"] is False
    assert model.model_validate(base | {"format": "csv", "header": True}).header is True
    assert model.model_validate(base | {"format": "parquet", "header": None}).header is None
    for fmt in ("parquet", "jsonl"):
        with pytest.raises(ValidationError, match=f"header is for CSV input; a {fmt} table names"):
            model.model_validate(base | {"format": fmt, "header": True})
    with pytest.raises(ValidationError, match="valid boolean"):
        model.model_validate(base | {"header": "yes"})
    schema = model.model_json_schema()["properties"]["header"]
    assert (schema["anyOf"], schema["default"]) == ([{"type": "boolean"}, {"type": "null"}], None)
