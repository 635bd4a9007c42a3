"""The one loader of a render gate's output folder for model cards: ``gate.json`` (one ComfyUI version,
schema ``quantgate.gate/1``) or a version matrix (``quantgate.gate-matrix/1``, one sub-folder per version),
and the render PNGs that ``harness.render.report.write_render_pngs`` put beside it.

Read defensively: the JSON through ``quant.inputs.load_json`` (a FIFO refused, bounded numbers and nesting, the
size capped), the fields the card uses validated by pydantic v2 models (a failure is one ``InputError`` line
naming the file and the field), image paths only inside the gate folder, PNGs decoded with Pillow's
pixel limit and checked against the size the record says they have.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from quant.errors import InputError

MAX_JSON_BYTES = 64 * 2**20
MAX_PNG_BYTES = 32 * 2**20
MAX_SIDE = 8192

_Str = Field(max_length=100_000)


class _M(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Verify(_M):
    available: bool = False
    passed: bool | None = None
    summary: str = ""
    findings: list[str] = Field(default_factory=list, max_length=100_000)
    min_comfy: str | None = None


class Candidate(_M):
    label: str = Field(min_length=1, max_length=1000)
    path: str = _Str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    format: str = Field(max_length=100)
    rendered_as: str = Field(max_length=100)
    twin_sha256: str | None = None
    threshold: float = Field(ge=0, le=1)
    min_ssim: float | None = None
    verify: Verify | None = None
    verdict: Literal["pass", "fail", "pending"]
    reasons: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    activations: dict | None = None


class Render(_M):
    role: str
    candidate: str | None = None
    seed: int = Field(ge=0)
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)
    ssim: float | None = None
    threshold: float | None = None
    passed: bool | None = Field(default=None, alias="pass")
    max_abs_diff: int | None = None


class Comfy(_M):
    version: str = Field(max_length=200)
    embedded: bool = False
    url: str | None = None
    system: dict = Field(default_factory=dict)
    devices: list[dict] = Field(default_factory=list)


class Source(_M):
    path: str = _Str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class WorkflowInfo(_M):
    name: str = _Str
    model_node: str | None = None
    settings: dict = Field(default_factory=dict)
    example_prompt: dict | None = None


class Control(_M):
    seed: int
    compared_to_seed: int | None = None
    ssim: float
    max_ssim: float
    passed: bool = Field(alias="pass")


class Repeat(_M):
    seed: int
    ssim: float
    min_ssim: float
    identical: bool | None = None
    passed: bool = Field(alias="pass")


class Images(_M):
    source: dict[str, str] = Field(default_factory=dict)
    candidates: dict[str, dict[str, str]] = Field(default_factory=dict)


class GateRecord(_M):
    schema_: Literal["quantgate.gate/1"] = Field(alias="schema")
    tool: dict
    comfyui: Comfy
    source: Source
    candidates: list[Candidate] = Field(min_length=1)
    workflow: WorkflowInfo
    seeds: list[int]
    sizes: list[tuple[int, int]]
    control: Control
    repeat: Repeat
    renders: list[Render]
    verdict: Literal["pass", "fail"]
    images: Images | None = None


class MatrixRow(_M):
    target: str = Field(max_length=10_000)
    comfyui_version: str = Field(max_length=200)
    verdict: Literal["pass", "fail"]
    report: str = _Str

    @field_validator("report")
    @classmethod
    def _has_name(cls, v: str) -> str:
        if not PurePosixPath(v).parent.name:
            raise ValueError("report path has no folder")
        return v


class GateMatrix(_M):
    schema_: Literal["quantgate.gate-matrix/1"] = Field(alias="schema")
    versions: list[MatrixRow] = Field(min_length=1)


class GateRun:
    """One gate run (one ComfyUI version): its record and the folder it lies in."""

    def __init__(self, record: GateRecord, folder: Path, raw: dict, path: Path):
        self.record, self.folder, self.raw, self.path = record, folder, raw, path

    def image(self, rel: str):
        """The decoded RGB pixels of a render PNG named in gate.json (a path inside the gate folder)."""
        return read_png(self.folder, rel, self.path)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    return f"{loc}: {err['msg']}"


def _load(path: Path) -> dict:
    from quant.inputs import load_json
    if not path.exists() and not path.is_symlink():
        raise InputError("no gate.json here: pass the folder `quantgate gate --out` or `quantgate demo` wrote", path)
    obj = load_json(path, what="gate record", max_bytes=MAX_JSON_BYTES)
    if not isinstance(obj, dict):
        raise InputError("not a quantgate gate record (expected a JSON object)", path)
    return obj


def _run(path: Path) -> GateRun:
    raw = _load(path)
    if raw.get("schema") != "quantgate.gate/1":
        raise InputError(f"not a quantgate gate record (schema {str(raw.get('schema'))[:60]!r}, expected "
                         "'quantgate.gate/1')", path)
    try:
        rec = GateRecord.model_validate(raw)
    except ValidationError as e:
        raise InputError(f"gate record is malformed: {_first_error(e)}", path) from None
    return GateRun(rec, path.parent, raw, path)


def load_gate_dir(folder) -> list[GateRun]:
    """The gate runs of a gate output folder, one per ComfyUI version (oldest first, as the matrix orders them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("not a folder (pass the folder `quantgate gate --out` or `quantgate demo` wrote)"
                         if folder.exists() else "no such folder", folder)
    top = folder / "gate.json"
    raw = _load(top)
    if raw.get("schema") == "quantgate.gate-matrix/1":
        try:
            m = GateMatrix.model_validate(raw)
        except ValidationError as e:
            raise InputError(f"gate matrix record is malformed: {_first_error(e)}", top) from None
        runs = []
        for row in m.versions:
            sub = PurePosixPath(row.report.replace("\\", "/")).parent.name
            if sub in ("", ".", "..") or "/" in sub:
                raise InputError(f"gate matrix names an unusable run folder {sub!r}", top)
            runs.append(_run(folder / sub / "gate.json"))
        return runs
    return [_run(top)]


def read_png(folder: Path, rel: str, named_in: Path):
    """Decode ``folder/rel`` (a PNG the gate wrote) to an RGB uint8 array. ``rel`` must stay inside ``folder``."""
    import numpy as np
    from PIL import Image
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not rel or "\\" in rel or p.suffix.lower() != ".png":
        raise InputError(f"image path {rel[:200]!r} is not a .png inside the gate folder", named_in)
    f = folder / Path(*p.parts)
    try:
        if not f.resolve().is_relative_to(folder.resolve()):
            raise InputError(f"image {rel[:200]!r} leads outside the gate folder", named_in)
        size = f.stat().st_size
    except FileNotFoundError:
        raise InputError("render image missing (the gate folder is incomplete)", f) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", f) from None
    if size > MAX_PNG_BYTES:
        raise InputError(f"render image is {size:,} bytes: too large", f)
    try:
        with Image.open(f) as im:
            if im.format != "PNG":
                raise InputError(f"not a PNG ({im.format})", f)
            if max(im.size) > MAX_SIDE:
                raise InputError(f"render image is {im.size[0]}x{im.size[1]}: too large", f)
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except InputError:
        raise
    except Exception as e:          # PIL raises many kinds (UnidentifiedImageError, DecompressionBombError, ...)
        raise InputError(f"cannot decode the render image: {type(e).__name__}", f) from None
    return arr
