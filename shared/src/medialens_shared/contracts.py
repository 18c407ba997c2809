"""The contracts every service shares: job statuses, the bus message, and each job type's params and result.

The gateway validates `params` against these models before anything is queued and publishes the JSON
Schemas at `/v1/job-types`; the services parse the same models and return the same result models. Every
job type of API.md has its models here; `JOB_TYPES`, the catalogue, lists a type only once a service runs
it, so the API never offers what nothing consumes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)


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


class Params(Strict):
    """A job type's params, checked as the JSON Schema `/v1/job-types` publishes says: no coercion (`"27"`
    is not a number, `true` is not a count; an integer is a number) and finite numbers only (`1e999` is
    valid JSON for infinity, which PostgreSQL's jsonb cannot hold: it was a 500)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class NoParams(Params):
    """This job type takes no params."""


#: What `header` of the table jobs' params says (`TableParams`).
HEADER_DESCRIPTION = (
    "Whether a CSV's first line names its columns; detected when not given (a first line of numbers over "
    "rows of numbers is read as a row). For CSV input only: refused with `format` parquet or jsonl, "
    "ignored for a file that `auto` finds to be one of those (they name their columns themselves)."
)


class TableParams(Params):
    """The params of a job that reads a table (`data.profile`, `data.convert`, `data.query`), each with its
    `format` and its `header`.

    `header` (an extension of API.md) is for a CSV: given with `format` parquet or jsonl, which name their
    columns themselves, it is refused, as params that contradict each other. Not given, it is left out
    of the params dumped rather than `null`, so that such a job's params are stored, shown and known by
    their Idempotency-Key as they were before it existed."""

    @model_validator(mode="after")
    def _header_of_a_csv(self) -> Self:
        fmt = getattr(self, "format", "auto")
        if getattr(self, "header", None) is not None and fmt in ("parquet", "jsonl"):
            raise ValueError(f"header is for CSV input; a {fmt} table names its columns itself")
        return self

    @model_serializer(mode="wrap")
    def _header_when_given(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped: dict[str, Any] = handler(self)
        if "header" in dumped and dumped["header"] is None:
            del dumped["header"]
        return dumped


class DataProfileParams(TableParams):
    format: Literal["auto", "csv", "parquet", "jsonl"] = Field(
        "auto", description="Table format; `auto` detects it from the content."
    )
    header: bool | None = Field(None, description=HEADER_DESCRIPTION)


#: The content change (0..255: the mean of |dY|, |dU|, |dV| on small planes) at which `video.scenes` considers
#: a cut when its `threshold` is not given.
SCENES_DEFAULT_THRESHOLD = 12.0


class VideoScenesParams(Params):
    #: At most 255: the detector's scores (mean absolute differences of 8-bit planes) are 0..255.
    threshold: float | None = Field(
        None,
        gt=0,
        le=255,
        description="Cut threshold of the detector, whose scores run 0..255; "
        f"{SCENES_DEFAULT_THRESHOLD:g} unless given.",
        json_schema_extra={"default": SCENES_DEFAULT_THRESHOLD},
    )
    min_scene_len_s: float = Field(0.5, ge=0, description="Shortest scene; closer cuts are merged.")
    thumbnails: bool = Field(True, description="Store one JPEG per scene as a file.")
    flash_suppression: bool = Field(False, description="Ignore a cut that returns to the same shot at once.")


class VideoQualityParams(Params):
    black_threshold: float = Field(
        0.1,
        ge=0,
        le=1,
        description="A pixel's luma (0..1) at or under which it is dark; a frame is black when 98% of its "
        "pixels are.",
    )
    min_black_s: float = Field(0.5, ge=0, description="Shortest black segment reported.")
    freeze_min_s: float = Field(2.0, ge=0, description="Shortest frozen segment reported.")


#: Thumbnails `video.thumbnails` makes when neither `count` nor `every_s` is given.
THUMBNAILS_DEFAULT_COUNT = 10


class VideoThumbnailsParams(Params):
    # None stays the value (a job's params read back as given), but the schema states the count applied.
    count: int | None = Field(
        None,
        ge=1,
        le=1000,
        description=f"Evenly spaced thumbnails; {THUMBNAILS_DEFAULT_COUNT} unless `every_s` is given.",
        json_schema_extra={"default": THUMBNAILS_DEFAULT_COUNT},
    )
    every_s: float | None = Field(None, gt=0, description="One thumbnail every this many seconds instead.")
    width: int = Field(320, ge=16, le=3840, description="Width in pixels; the height keeps the aspect.")

    @model_validator(mode="after")
    def _one_spacing(self) -> VideoThumbnailsParams:
        if self.count is not None and self.every_s is not None:
            raise ValueError("give either count or every_s, not both")
        return self


class AudioSilenceParams(Params):
    threshold_db: float = Field(-50.0, le=0, description="Level (dBFS) under which audio is silent.")
    #: At most a day: a length in samples of 1e305 s overflowed (an INTERNAL_ERROR, not a 422).
    min_duration_s: float = Field(0.5, gt=0, le=86_400, description="Shortest silence reported.")


class AudioWaveformParams(Params):
    points_per_second: int = Field(
        10,
        ge=1,
        le=1000,
        description="Min/max pairs per second of audio; lowered when the whole file would need more than "
        "250,000 pairs (the result's points_per_second is the rate drawn).",
    )


class DataConvertParams(TableParams):
    to: Literal["parquet", "csv", "jsonl"] = Field(description="The output format.")
    format: Literal["auto", "csv", "parquet", "jsonl"] = Field("auto", description="The input format.")
    header: bool | None = Field(None, description=HEADER_DESCRIPTION)


class DataQueryParams(TableParams):
    sql: str = Field(
        min_length=1, max_length=100_000, description="One read-only SELECT over the table `data`."
    )
    limit: int = Field(1000, ge=1, le=100_000, description="Rows returned in the result document.")
    format: Literal["auto", "csv", "parquet", "jsonl"] = Field("auto", description="The input format.")
    header: bool | None = Field(None, description=HEADER_DESCRIPTION)


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
    sample_aspect_ratio: str = Field(
        "1:1",
        description="The shape of a pixel, width:height, as ffprobe gives it (16:11 for PAL 16:9 stored "
        "720x576); 1:1 when the file states none or an unusable one.",
    )
    display_aspect_ratio: str = Field(
        "1:1",
        description="The picture's shape as shown, width:height: the stored size times the pixel shape, "
        "before rotation, as ffprobe gives it (16:9).",
    )
    field_order: str | None = Field(
        None,
        description="How the frames are scanned, as ffprobe names it: progressive, or interlaced with its "
        "fields coded and shown top first (tt), bottom first (bb), coded top first and shown bottom first "
        "(tb) or the reverse (bt); null when the stream does not say.",
    )


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


class Scene(BaseModel):
    index: int
    start_s: float
    end_s: float
    start_frame: int
    end_frame: int
    thumbnail_file_id: str | None = None


class VideoScenesResult(BaseModel):
    scenes: list[Scene]
    cut_count: int
    frames_analyzed: int


class Segment(BaseModel):
    start_s: float
    end_s: float


class VideoQualityResult(BaseModel):
    black_segments: list[Segment]
    frozen_segments: list[Segment]


class Thumbnail(BaseModel):
    t_s: float
    file_id: str
    width: int
    height: int


class VideoThumbnailsResult(BaseModel):
    thumbnails: list[Thumbnail]


class ShortTermPoint(BaseModel):
    t_s: float
    lufs: float | None


class AudioLoudnessResult(BaseModel):
    integrated_lufs: float | None
    loudness_range_lu: float | None
    true_peak_dbtp: float | None
    sample_peak_dbfs: float | None
    short_term: list[ShortTermPoint]


class SilenceSegment(BaseModel):
    start_s: float
    end_s: float
    duration_s: float


class AudioSilenceResult(BaseModel):
    segments: list[SilenceSegment]
    total_silence_s: float
    segment_count: int | None = Field(
        None,
        description="Silences found in all; more than `segments` lists when `segments_truncated` (None in "
        "results stored before it was counted).",
    )
    segments_truncated: bool = Field(
        False,
        description="True when more silences were found than one result lists (50,000): `segments` holds "
        "the first ones in time order, `segment_count` and `total_silence_s` count them all.",
    )


class AudioWaveformResult(BaseModel):
    points_per_second: int
    duration_s: float
    peaks: list[tuple[float, float]]


class DataConvertResult(BaseModel):
    file_id: str
    row_count: int
    size_bytes: int


class QueryColumn(BaseModel):
    name: str
    dtype: str


class DataQueryResult(BaseModel):
    columns: list[QueryColumn]
    rows: list[list[Any]]
    row_count: int
    file_id: str


class MediaAnalyzeResult(BaseModel):
    """The results of a `media.analyze` job's children, each under its job type's name."""

    model_config = ConfigDict(populate_by_name=True)

    video_probe: VideoProbeResult | None = Field(None, alias="video.probe")
    video_scenes: VideoScenesResult | None = Field(None, alias="video.scenes")
    video_quality: VideoQualityResult | None = Field(None, alias="video.quality")
    audio_loudness: AudioLoudnessResult | None = Field(None, alias="audio.loudness")
    audio_silence: AudioSilenceResult | None = Field(None, alias="audio.silence")


# --- the catalogue ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobTypeSpec:
    name: str
    #: Who runs it; "gateway" for a composite job, which the gateway fans out into its `children`.
    service: Literal["video", "audio", "data", "gateway"]
    description: str
    params: type[BaseModel]
    result: type[BaseModel]
    accepts: frozenset[FileKind]
    #: The job types a composite job runs, one child job each, on the same input.
    children: tuple[str, ...] = ()
    #: Those of `children` that may find nothing to analyse in its input (UNSUPPORTED_INPUT: a video without
    #: a soundtrack for the audio parts), which leaves a gap in its result rather than failing it.
    optional: tuple[str, ...] = ()

    def result_schema(self) -> dict[str, Any]:
        """The JSON Schema of the type's result document as it is served: the fields every result document
        carries (`ResultBase`), then the type's own (`result` alone left the four common ones out)."""
        own = self.result.model_json_schema()
        base = ResultBase.model_json_schema()
        return own | {
            "properties": base["properties"] | own.get("properties", {}),
            "required": [*base["required"], *own.get("required", [])],
        }


_MEDIA = frozenset({FileKind.VIDEO, FileKind.AUDIO})

JOB_TYPES: dict[str, JobTypeSpec] = {
    spec.name: spec
    for spec in (
        JobTypeSpec(
            name="video.probe",
            service="video",
            description=(
                "Container and stream metadata of a video, read without decoding it but for its first frame."
            ),
            params=NoParams,
            result=VideoProbeResult,
            accepts=frozenset({FileKind.VIDEO}),
        ),
        JobTypeSpec(
            name="video.scenes",
            service="video",
            description="Hard cuts between scenes, timed by the decoder's pts, with a thumbnail per scene.",
            params=VideoScenesParams,
            result=VideoScenesResult,
            accepts=frozenset({FileKind.VIDEO}),
        ),
        JobTypeSpec(
            name="video.quality",
            service="video",
            description="Black and frozen segments of a video.",
            params=VideoQualityParams,
            result=VideoQualityResult,
            accepts=frozenset({FileKind.VIDEO}),
        ),
        JobTypeSpec(
            name="video.thumbnails",
            service="video",
            description="Evenly spaced (or periodic) JPEG thumbnails of a video, stored as files.",
            params=VideoThumbnailsParams,
            result=VideoThumbnailsResult,
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
            name="audio.loudness",
            service="audio",
            description="EBU R128 / BS.1770-4 loudness: integrated, range, true peak, short-term series.",
            params=NoParams,
            result=AudioLoudnessResult,
            accepts=_MEDIA,
        ),
        JobTypeSpec(
            name="audio.silence",
            service="audio",
            description="Intervals quieter than a threshold for at least a minimum duration.",
            params=AudioSilenceParams,
            result=AudioSilenceResult,
            accepts=_MEDIA,
        ),
        JobTypeSpec(
            name="audio.waveform",
            service="audio",
            description="Min/max peak pairs of the mono mix, the data a web player draws.",
            params=AudioWaveformParams,
            result=AudioWaveformResult,
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
        JobTypeSpec(
            name="data.convert",
            service="data",
            description="The table in another format (zstd Parquet, CSV or JSON lines), stored as a file.",
            params=DataConvertParams,
            result=DataConvertResult,
            accepts=frozenset({FileKind.TABLE}),
        ),
        JobTypeSpec(
            name="data.query",
            service="data",
            description="One read-only SQL query over the table `data`, in a sandbox; the answer as Parquet.",
            params=DataQueryParams,
            result=DataQueryResult,
            accepts=frozenset({FileKind.TABLE}),
        ),
        JobTypeSpec(
            name="media.analyze",
            service="gateway",
            description="Probe, scenes, quality, loudness and silences of one video, as child jobs; the "
            "result gathers theirs under their type names.",
            params=NoParams,
            result=MediaAnalyzeResult,
            accepts=frozenset({FileKind.VIDEO}),
            children=("video.probe", "video.scenes", "video.quality", "audio.loudness", "audio.silence"),
            optional=("audio.loudness", "audio.silence"),
        ),
    )
}

SERVICES: tuple[Literal["video", "audio", "data"], ...] = ("video", "audio", "data")

#: Every job type that is a part of a composite one, in the order its composite lists its parts: the order
#: of a composite job's `children` (the parts of one submission share their creation time). One order for
#: all composites, which must list the parts they share in the same order (a test checks).
PART_ORDER: tuple[str, ...] = tuple(
    dict.fromkeys(part for spec in JOB_TYPES.values() for part in spec.children)
)


def job_types_of(service: str) -> list[JobTypeSpec]:
    """The job types one service consumes."""
    return [spec for spec in JOB_TYPES.values() if spec.service == service]
