"""Request bodies of `/v1/jobs`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StringConstraints, WithJsonSchema

from medialens_shared.contracts import JOB_TYPES

LABEL_KEY_PATTERN = r"^[A-Za-z0-9._/-]+$"
LABEL_KEY_MAX, LABEL_VALUE_MAX, LABELS_MAX = 63, 255, 32
LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=LABEL_KEY_MAX, pattern=LABEL_KEY_PATTERN)
]
LabelValue = Annotated[str, StringConstraints(max_length=LABEL_VALUE_MAX)]
#: How `labels` is documented: Pydantic writes a dict with patterned keys as `patternProperties`, which
#: lets any key that does not match the pattern through, with any value; validation refuses such a key
#: (422), so a client generated from the document sent bodies it thought valid. Every key must match.
LABELS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "propertyNames": {"minLength": 1, "maxLength": LABEL_KEY_MAX, "pattern": LABEL_KEY_PATTERN},
    "additionalProperties": {"type": "string", "maxLength": LABEL_VALUE_MAX},
    "maxProperties": LABELS_MAX,
    "description": "Up to 32 `key: value` strings of the client's own, kept with the job and filterable "
    "(`?label=key:value`).",
}


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: Documented as an enum (a client generated from the document offers the types), checked by the
    #: service rather than by validation: an unknown type is answered with the list of the known ones.
    type: str = Field(
        description="A job type of /v1/job-types, e.g. `video.probe`.",
        json_schema_extra={"enum": list(JOB_TYPES)},
    )
    #: Not empty: no file has an empty id, and a bound on the length also has validation check that the text
    #: is Unicode. JSON can spell a lone surrogate (`"\udc00"`), which a bare `str` let through to the
    #: queries and the job message, whose UTF-8 encoding then failed (a 500); it is a 422 now, as in a label.
    file_id: str = Field(min_length=1, description="The input: a file of this tenant.")
    params: dict[str, Any] = Field(default_factory=dict, description="Checked against the type's schema.")
    labels: Annotated[dict[LabelKey, LabelValue], WithJsonSchema(LABELS_SCHEMA)] = Field(
        default_factory=dict, max_length=LABELS_MAX
    )
    #: Strict: `"5"` or `true` are not priorities (lax validation took them, `true` as 1).
    priority: StrictInt = Field(5, ge=0, le=9)
    callback_url: Annotated[str, Field(max_length=2048, json_schema_extra={"format": "uri"})] | None = Field(
        None,
        description="Where the terminal job object is POSTed (`https://` unless configured otherwise).",
    )
