"""What a ComfyUI server answers (``/system_stats``, ``/object_info``, ``/history``, ``POST /prompt``,
websocket messages, ``/internal/logs/raw``): schemas for the fields quantgate reads. A server that answers
something else is named by its URL in one line (the caller's error class, exit 2)."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from . import bounded
from .schema import Int, NonNegInt, Open, ShortText, Text, validate

MAX_JSON_BYTES = 64 << 20       # /object_info of an install with many custom node packs is a few MB


class _System(Open):
    comfyui_version: ShortText = "unknown"
    python_version: Text | None = None
    pytorch_version: Text | None = None
    os: Text | None = None


class _Device(Open):
    name: Text = ""
    type: ShortText = ""
    index: Int | None = None
    vram_total: NonNegInt | float | None = None
    vram_free: NonNegInt | float | None = None


class SystemStats(Open):
    system: _System = Field(default_factory=_System)
    devices: list[_Device] = Field(default_factory=list, max_length=1024)


class _NodeInputs(Open):
    required: dict[ShortText, Any] = Field(default_factory=dict)
    optional: dict[ShortText, Any] = Field(default_factory=dict)


class _NodeInfo(Open):
    input: _NodeInputs = Field(default_factory=_NodeInputs)


class ObjectInfo(Open):
    nodes: dict[ShortText, _NodeInfo] = Field(max_length=1_000_000)


class _Image(Open):
    filename: ShortText
    subfolder: ShortText = ""
    type: ShortText = "output"


class _Output(Open):
    images: list[_Image] = Field(default_factory=list, max_length=100_000)


class _Status(Open):
    status_str: ShortText | None = None
    completed: bool | None = None
    messages: list[list] = Field(default_factory=list, max_length=100_000)


class HistoryEntry(Open):
    status: _Status = Field(default_factory=_Status)
    outputs: dict[ShortText, _Output] = Field(default_factory=dict, max_length=100_000)


class History(Open):
    entries: dict[ShortText, HistoryEntry] = Field(max_length=100_000)


class PromptAnswer(Open):
    prompt_id: ShortText | None = None
    error: dict | ShortText | Text | None = None
    node_errors: dict[ShortText, Any] = Field(default_factory=dict)


class WsMessage(Open):
    type: ShortText
    data: dict = Field(default_factory=dict)


class _LogEntry(Open):
    m: Text = ""


class Logs(Open):
    entries: list[_LogEntry | Any] = Field(default_factory=list, max_length=100_000)


def answer(raw: bytes | str, url: str, model, *, error, what: str = "answer", wrap: str | None = None,
           max_bytes: int = MAX_JSON_BYTES):
    """Parse (bounded) and validate a server's JSON answer. ``wrap``: validate ``{wrap: obj}`` (for answers
    that are a bare mapping). Returns the plain parsed object."""
    obj = bounded.parse_json(raw, url, what=what, max_bytes=max_bytes, error=error, max_depth=64)
    validate(model, {wrap: obj} if wrap else obj, url, what=what, error=error)
    return obj


class Queue(Open):
    queue_running: list = Field(default_factory=list, max_length=1_000_000)
    queue_pending: list = Field(default_factory=list, max_length=1_000_000)


class AnyObject(Open):
    value: dict


class Extensions(Open):
    """``GET /extensions``: the front-end scripts ComfyUI serves (a list of URL paths)."""
    value: list[str] = Field(max_length=100_000)
