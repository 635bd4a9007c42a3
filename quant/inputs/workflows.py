"""ComfyUI workflow JSON (UI format ``{nodes, links}`` and API format ``{id: {class_type, inputs}}``) and
pytest-benchmark nightly records."""
from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, field_validator

from ..errors import InputError
from . import bounded
from .schema import AnyFloat, Int, Name, NonNegFloat, Open, ShortText, Strict, Text, validate

MAX_BYTES = 64 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000
NodeId = Annotated[str, Field(strict=True, min_length=1, max_length=256)]
InputName = Annotated[str, Field(strict=True, max_length=4096)]


class _Meta(Open):
    title: Text = ""


class ApiNode(Open):
    class_type: Name
    inputs: dict[InputName, Any] = Field(default_factory=dict, max_length=10_000)
    _meta: _Meta | None = None


class ApiWorkflow(Strict):
    nodes: dict[NodeId, ApiNode] = Field(min_length=1, max_length=MAX_NODES)


class UiNode(Open):
    id: Int | NodeId
    type: Name
    mode: Int = 0
    title: Text = ""
    widgets_values: list | dict | None = None
    inputs: list[dict] | None = Field(default=None, max_length=10_000)
    outputs: list[dict] | None = Field(default=None, max_length=10_000)


class _Subgraph(Open):
    nodes: list[UiNode] = Field(default_factory=list, max_length=MAX_NODES)


class _Definitions(Open):
    subgraphs: list[_Subgraph] = Field(default_factory=list, max_length=10_000)


class UiWorkflow(Open):
    nodes: list[UiNode] = Field(max_length=MAX_NODES)
    links: list[list | dict] = Field(max_length=10 * MAX_NODES)
    definitions: _Definitions | None = None


def parse_workflow(raw: bytes, path, *, api_only: bool = False) -> tuple[object, str]:
    """-> (the parsed JSON, "ui" | "api"), validated; InputError naming ``path`` and the field otherwise."""
    obj = bounded.parse_json(raw, path, what="workflow", max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    if isinstance(obj, dict) and "nodes" in obj and "links" in obj:
        if api_only:
            raise InputError("this is a UI workflow; export it with 'Save (API Format)' (API format is needed)", path)
        validate(UiWorkflow, obj, path, what="UI workflow")
        return obj, "ui"
    if not isinstance(obj, dict) or not obj or not all(isinstance(n, dict) and "class_type" in n for n in obj.values()):
        raise InputError("not a ComfyUI workflow (neither UI format {nodes, links} nor API format "
                         "{id: {class_type, inputs}})", path)
    validate(ApiWorkflow, {"nodes": obj}, path, what="API workflow")
    return obj, "api"


def workflow_json(path, *, api_only: bool = False) -> tuple[bytes, object, str]:
    """-> (the file's bytes, the parsed JSON, "ui" | "api")."""
    raw = bounded.read_bytes(path, max_bytes=MAX_BYTES, what="workflow")
    obj, kind = parse_workflow(raw, path, api_only=api_only)
    return raw, obj, kind


# -- nightly records (pytest-benchmark JSON) ---------------------------------------------------------------
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$")


class _Stats(Open):
    min: NonNegFloat | None = None
    max: NonNegFloat | None = None
    mean: NonNegFloat | None = None
    median: NonNegFloat | None = None
    stddev: NonNegFloat | None = None
    rounds: Int | None = None
    iterations: Int | None = None


class _Bench(Open):
    name: Name
    stats: _Stats
    extra_info: dict[ShortText, Any] = Field(default_factory=dict, max_length=10_000)
    group: ShortText | None = None
    fullname: Text = ""


class _Commit(Open):
    id: ShortText | None = None
    dirty: bool | None = None


class NightlyRecord(Open):
    machine_info: dict
    commit_info: _Commit
    benchmarks: list[_Bench] = Field(max_length=100_000)
    datetime: ShortText
    version: ShortText | None = None

    @field_validator("datetime")
    @classmethod
    def _iso(cls, v):
        if not _ISO.match(v):
            raise ValueError("must be an ISO 8601 date and time (YYYY-MM-DDTHH:MM:SS)")
        return v


def nightly_record(path) -> dict:
    obj = bounded.load_json(path, what="nightly record", max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    if not isinstance(obj, dict) or not all(k in obj for k in ("machine_info", "commit_info", "benchmarks", "datetime")):
        raise InputError("not a pytest-benchmark record (needs machine_info, commit_info, benchmarks, datetime)", path)
    validate(NightlyRecord, obj, path, what="nightly record")
    return obj


__all__ = ["workflow_json", "parse_workflow", "nightly_record", "AnyFloat"]
