"""Request and response shapes of the HTTP API.

`GenerateRequest` is made from `GenerationRequest`'s fields (request.py): the same names, defaults,
bounds, choices and help, so the JSON API cannot drift from the Python one. Pydantic checks only the
JSON types; the values are checked by the type itself (`verify` / `resolve`, see resolve.py), so a
refusal reads the same on every surface. The bounds are still written into the JSON schema.
Audio inputs (`init_audio`, `inpaint_audio`) are multipart file uploads, not JSON fields.

Every refusal is a `RequestError` naming the offending field, so clients get
`{"error": {"type": ..., "field": ..., "message": ...}}` with a 4xx status and never a 500.
"""

from __future__ import annotations

import dataclasses
import re
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from ..request import FIELDS, PYTHON_ONLY

UPLOAD_FIELDS = tuple(name for name, f in FIELDS.items() if f.metadata["kind"] == "audio")  # multipart files
JSON_FIELDS = tuple(name for name in FIELDS if name not in PYTHON_ONLY and name not in UPLOAD_FIELDS)
MAX_LORAS = 8  # LoRAs one request may stack


class RequestError(Exception):
    """A refusal: HTTP `status`, the request `field` at fault (or None) and a message for people."""

    def __init__(self, status: int, field: str | None, message: str, kind: str = "invalid_request",
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.field, self.message, self.kind = status, field, message, kind
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"type": self.kind, "field": self.field, "message": self.message}}


def _with_bounds(bounds: dict[str, float]):
    """A json_schema_extra that writes the bounds on the property and on every number inside it (the scalar
    form of a union, a list's items, a pair's two members): documented here, enforced by the request type."""

    def extra(schema: dict) -> None:
        schema.update(bounds)
        for member in [schema, *schema.get("anyOf", [])]:
            if member.get("type") in ("number", "integer"):
                member.update(bounds)
            for item in [member.get("items"), *member.get("prefixItems", [])]:
                if isinstance(item, dict) and item.get("type") in ("number", "integer"):
                    item.update(bounds)

    return extra


class LoraRequest(BaseModel):
    """One LoRA to apply: a name the server was started with (`--lora`) and its strength."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(..., description="a LoRA name from GET /v1/models (`loras`)")
    strength: float = Field(1.0, description="any finite number: 0 is the base model, 1 the LoRA as trained")


class LoraConfig(BaseModel):
    """Sampling controls of one LoRA of the request's `loras` list (checked by the request type)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    lora_index: int = Field(..., description="which LoRA: its 0-based place in this request's `loras` list",
                            json_schema_extra={"minimum": 0})
    interval: tuple[float, float] = Field((0.0, 1.0), description="the LoRA acts only while t (1 = noise) is in "
                                          "[low, high]", json_schema_extra=_with_bounds({"minimum": 0, "maximum": 1}))
    layer_filter: str = Field("", description="comma-separated name parts: layers whose name holds one are left "
                              "without this LoRA")


# JSON shapes of the type's "json" fields; any other json field takes any JSON value (the type checks it)
JSON_SHAPES: dict[str, Any] = {"dist_shift": dict[str, Any], "lora_configs": list[LoraConfig]}


def field_default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]


def field_bounds(meta) -> dict[str, float]:
    """JSON-schema bounds of a field's metadata: minimum or exclusiveMinimum, and maximum."""
    bounds: dict[str, float] = {}
    if meta["low"] is not None:
        bounds["exclusiveMinimum" if meta["low_open"] else "minimum"] = meta["low"]
    if meta["high"] is not None:
        bounds["maximum"] = meta["high"]
    return {k: int(v) for k, v in bounds.items()} if meta["integer"] else bounds


def _annotation(name: str, f: dataclasses.Field) -> Any:
    """The JSON type of a request field, from its kind: per-item fields take one value or a list."""
    meta, kind = f.metadata, f.metadata["kind"]
    if kind == "text":
        base: Any = str
    elif kind in ("number", "regions"):
        base = int if meta["integer"] else float
    elif kind == "choice":
        base = Literal[tuple(meta["choices"])]
    elif kind == "bool":
        base = bool
    elif kind == "pair":
        base = tuple[float, float]
    else:
        base = JSON_SHAPES.get(name, Any)
    if base is Any:
        return Any
    if meta["per_item"] or kind == "regions":
        base = base | list[base]
    return base | None if field_default(f) is None else base


def json_words(text: str) -> str:
    """Help written for Python, read by JSON clients: None, True, False -> null, true, false."""
    return re.sub(r"\b(None|True|False)\b", lambda m: {"None": "null", "True": "true", "False": "false"}[m[1]], text)


def _field_info(name: str, f: dataclasses.Field) -> FieldInfo:
    bounds = field_bounds(f.metadata)
    return Field(field_default(f), description=json_words(f.metadata["help"]),
                 json_schema_extra=_with_bounds(bounds) if bounds else None)


def _prompt_required(schema: dict) -> None:
    """The type's prompt defaults to None and refuses it: the schema says a request must give one."""
    schema["required"] = ["prompt", *[r for r in schema.get("required", []) if r != "prompt"]]


class _GenerateBase(BaseModel):
    """The options of `GenerationRequest` as JSON (lists give one value per item), plus the server's own:
    which model, and LoRAs by name. Audio inputs are multipart uploads."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=(),
                              json_schema_extra=_prompt_required)


GenerateRequest: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "GenerateRequest",
    __base__=_GenerateBase,
    __module__=__name__,
    model=(str | None, Field(None, description="a name from GET /v1/models (default: the first one)")),
    **{name: (_annotation(name, FIELDS[name]), _field_info(name, FIELDS[name])) for name in JSON_FIELDS},
    loras=(list[LoraRequest] | None, Field(None, max_length=MAX_LORAS, description="LoRAs to stack, in order, by "
                                           "the names the server was started with (GET /v1/models); "
                                           "lora_configs[i].lora_index counts in this list")),
)


def generation_fields() -> dict[str, FieldInfo]:
    """The pydantic fields made from `GenerationRequest`, by name (for tests holding every surface to the type)."""
    return {name: GenerateRequest.model_fields[name] for name in JSON_FIELDS}


def inline_refs(schema: dict) -> dict:
    """A pydantic JSON schema with its `$defs` put in place: embedded in the OpenAPI document, a
    '#/$defs/...' reference would point at nothing."""
    defs = schema.get("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve({**defs[ref.removeprefix("#/$defs/")], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


@cache
def generate_schema() -> dict:
    """GenerateRequest's JSON schema, self-contained (the OpenAPI document's components.schemas entry)."""
    return inline_refs(GenerateRequest.model_json_schema())


def generate_body() -> dict:
    """The OpenAPI requestBody of POST /v1/generate: JSON, or multipart with the JSON and the audio files."""
    uploads = {name: {"type": "string", "format": "binary", "description": FIELDS[name].metadata["help"]}
               for name in UPLOAD_FIELDS}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/GenerateRequest"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["request"],
                    "properties": {
                        "request": {"type": "string", "description": "the JSON request (GenerateRequest) as text"},
                        **uploads,
                    },
                }
            },
        },
    }


# pydantic's names for union members in error locations: not fields, so left out of the field we report
_TYPE_TAGS = {"str", "int", "float", "bool", "none", "function-after", "any"}


def field_name(loc: tuple) -> str:
    """pydantic error location -> 'seed[1]' style; the union member names pydantic adds are dropped."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in _TYPE_TAGS or not str(part).isidentifier():
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def validation_refusal(error: dict) -> RequestError:
    """pydantic's (first) error as a 422 naming the field: 'steps: Input should be a valid integer'."""
    field = field_name(tuple(error.get("loc", ())))
    return RequestError(422, field, f"{field}: {error.get('msg', 'invalid request')}")


class BatchInfo(BaseModel):
    id: str | None
    jobs: int | None = Field(None, description="jobs generated together in this batch")
    items: int | None = Field(None, description="items (outputs) generated together")


class JobInfo(BaseModel):
    id: str
    model: str
    status: Literal["queued", "running", "completed", "failed", "cancelled"]
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    queue_position: int | None = Field(None, description="queued jobs of this model ahead of this one")
    progress: float = Field(..., description="0..1, sampling steps done")
    step: int
    total_steps: int
    seeds: list[int] = Field(..., description="the seed of each item (an int seed: the same for every item, "
                             "which share one generator)")
    durations: list[float]
    num_outputs: int
    batch: BatchInfo
    attempts: int = Field(..., description="runs started (more than 1 after a restart)")
    worker: str | None = Field(None, description="host:pid:tag of the worker that ran it")
    timings: dict[str, float]
    error: str | None
    audio_urls: list[str]
    request: dict
    warnings: list[str] = Field([], description="things the model will not follow, e.g. prompt words outside a "
                                                "closed vocabulary (the demo's), with the nearest known ones")
    long_form: dict | None = Field(None, description="a long-form job (POST /v1/long): its plan (each window's "
                                   "seed, prompt and span), the window being sampled, the seconds of audio final "
                                   "so far, and its stream_url")


class JobCreated(BaseModel):
    id: str
    status: str
    url: str
    warnings: list[str] = []
    seeds: list[int]


class ModelInfo(BaseModel):
    name: str
    sample_rate: int
    max_duration: float
    default_duration: float = Field(..., description="seconds generated when a request gives no duration")
    max_sample_size: int = Field(..., description="the largest sample_size a request may give")
    is_base: bool
    default_steps: int
    default_cfg_scale: float
    default_sampler: str
    device: str
    queued: int
    running: int
    loras: list[str] = Field(..., description="LoRA names requests may use with this model")
