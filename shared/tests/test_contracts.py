"""The job catalogue's own consistency, which the gateway's queries rely on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from medialens_shared.contracts import JOB_TYPES, PART_ORDER, AudioSilenceParams, VideoScenesParams


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
