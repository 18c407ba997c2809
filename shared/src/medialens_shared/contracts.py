"""The contracts every service shares: job statuses, the bus message, and each job type's params and result.

The gateway validates `params` against these models before anything is queued and publishes the JSON
Schemas at `/v1/job-types`; the services parse the same models and return the same result models. A job
type exists here only once a service runs it, so the catalogue never offers what nothing consumes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class FileKind(enum.StrEnum):
    """What an upload is, detected from its first bytes (see `medialens_shared.sniff`)."""

    VIDEO = "video"
    AUDIO = "audio"
    TABLE = "table"
    UNKNOWN = "unknown"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class JobMessage(Strict):
    """The body of a job message on the bus. The job row in PostgreSQL stays the source of truth."""

    job_id: str
    type: str
    tenant_id: str
    file_id: str | None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: int = 5


# --- params -----------------------------------------------------------------------------------------


class NoParams(Strict):
    """This job type takes no params."""


class DataProfileParams(Strict):
    format: Literal["auto", "csv", "parquet", "jsonl"] = Field(
        "auto", description="Table format; `auto` detects it from the content."
    )


# --- results ----------------------------------------------------------------------------------------


class ResultBase(BaseModel):
    """Fields every result document carries, filled in by the task base."""

    job_id: str
    type: str
    input_file_id: str | None
    created_at: datetime


class ProbeFormat(BaseModel):
    name: str
    duration_s: float | None
    size_bytes: int
    bit_rate: int | None


class ProbeVideoStream(BaseModel):
    codec: str
    width: int
    height: int
    fps: float | None = Field(description="Nominal frame rate (the stream's guessed rate).")
    avg_fps: float | None = Field(None, description="Average frame rate (frames over duration).")
    is_vfr: bool = Field(False, description="True when the nominal and average rates disagree.")
    frame_count: int | None
    pix_fmt: str | None
    rotation: int = Field(0, description="Display rotation in degrees (0, 90, 180, 270).")


class ProbeAudioStream(BaseModel):
    codec: str
    sample_rate: int
    channels: int
    duration_s: float | None


class VideoProbeResult(BaseModel):
    format: ProbeFormat
    video: ProbeVideoStream
    audio: list[ProbeAudioStream]


class AudioProbeResult(BaseModel):
    codec: str
    sample_rate: int
    channels: int
    duration_s: float | None
    bit_rate: int | None


class TopValue(BaseModel):
    value: Any
    count: int


class ColumnProfile(BaseModel):
    name: str
    dtype: str
    null_count: int
    distinct_count: int | None = None
    distinct_approx: bool = False
    min: Any = None
    max: Any = None
    mean: float | None = None
    std: float | None = None
    p25: Any = None
    p50: Any = None
    p75: Any = None
    top_values: list[TopValue] = Field(default_factory=list)


class DataProfileResult(BaseModel):
    row_count: int
    column_count: int
    columns: list[ColumnProfile]


# --- the catalogue ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobTypeSpec:
    name: str
    service: Literal["video", "audio", "data"]
    description: str
    params: type[BaseModel]
    result: type[BaseModel]
    accepts: frozenset[FileKind]


_MEDIA = frozenset({FileKind.VIDEO, FileKind.AUDIO})

JOB_TYPES: dict[str, JobTypeSpec] = {
    spec.name: spec
    for spec in (
        JobTypeSpec(
            name="video.probe",
            service="video",
            description="Container and stream metadata of a video, read without decoding it.",
            params=NoParams,
            result=VideoProbeResult,
            accepts=frozenset({FileKind.VIDEO}),
        ),
        JobTypeSpec(
            name="audio.probe",
            service="audio",
            description="Codec, sample rate, channels, duration and bit rate of the first audio stream.",
            params=NoParams,
            result=AudioProbeResult,
            accepts=_MEDIA,
        ),
        JobTypeSpec(
            name="data.profile",
            service="data",
            description="Row and column counts and per-column statistics of a CSV, Parquet or JSON-lines "
            "table.",
            params=DataProfileParams,
            result=DataProfileResult,
            accepts=frozenset({FileKind.TABLE}),
        ),
    )
}

SERVICES: tuple[Literal["video", "audio", "data"], ...] = ("video", "audio", "data")


def job_types_of(service: str) -> list[JobTypeSpec]:
    """The job types one service consumes."""
    return [spec for spec in JOB_TYPES.values() if spec.service == service]
