"""Activation statistics (``quantgate calibrate`` -> ``convert/verify --calibration calib.json``), the
``--input-scales`` JSON, and the two metadata records inside activation safetensors files (a
``QGCalibrationSave`` run file fetched from a server, a held-out samples file)."""
from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ..errors import InputError
from . import bounded
from .schema import (AnyFloat, Float, Name, NonNegFloat, NonNegInt, Open, PosInt, Sha256, ShortText, Strict,
                     validate)

SCHEMA = "quantgate.calibration/1"
RUN_SCHEMA = "quantgate.calibration-run/1"
SAMPLES_SCHEMA = "quantgate.calibration-samples/1"
MAX_BYTES = 512 << 20           # per-layer statistics of a 14B model are ~25 MB
MAX_LAYERS = 1_000_000
_PKEY = re.compile(r"p\d{1,2}(\.\d{1,6})?\Z")
Frac = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=1.0)]
Pct = Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0, lt=100.0)]


class _Stats(Open):
    """calls/count/amax/percentiles/mean/std of one layer or one of its sigma bins; ``pNN.N`` keys are the
    recorded percentiles (finite, >= 0); no other unknown key."""
    calls: NonNegInt = 0
    count: NonNegInt = 0
    amax: NonNegFloat
    mean: Float = 0.0
    std: NonNegFloat = 0.0
    zero_fraction: Frac = 0.0

    @model_validator(mode="after")
    def _percentile_keys(self):
        for k, v in (self.model_extra or {}).items():
            if not _PKEY.match(k):
                raise ValueError(f"{k[:40]!r} is not a known field (statistics are amax, pNN.N, mean, std)")
            if type(v) not in (int, float) or not (0.0 <= float(v) <= 3.4028234663852886e38):
                raise ValueError(f"{k}: must be a finite number >= 0")
        return self


class _Bin(_Stats):
    bin: NonNegInt
    t: list[Frac] = Field(min_length=2, max_length=2)


class _Channels(Strict):
    amax_median: NonNegFloat
    amax_max_over_median: NonNegFloat | None = None
    top: list[list[AnyFloat]] = Field(default_factory=list, max_length=64)


class _Layer(_Stats):
    in_features: PosInt
    channels: _Channels | None = None
    bins: list[_Bin] = Field(default_factory=list, max_length=4096)


class _Bins(Strict):
    n: int = Field(strict=True, ge=1, le=4096)
    t_edges: list[Frac] = Field(max_length=4097)
    t: ShortText = ""


class _Model(Open):
    name: ShortText = ""
    sha256: Sha256 | None = None


class _Comfy(Open):
    version: ShortText = ""
    embedded: bool = False


class _Provenance(Open):
    model: _Model | None = None
    workflow: dict | None = None
    seeds: list[int] = Field(default_factory=list, max_length=100_000)
    sizes: list[list[PosInt]] = Field(default_factory=list, max_length=10_000)
    holdout_seeds: list[int] = Field(default_factory=list, max_length=100_000)
    comfyui: _Comfy | None = None
    tool: dict | None = None
    nodes: ShortText = ""
    holdout_samples: dict | None = None


class CalibrationFile(Strict):
    schema_: Literal["quantgate.calibration/1"] = Field(alias="schema")
    provenance: _Provenance | None = None
    percentiles: list[Pct] = Field(default_factory=list, max_length=64)
    bins: _Bins | None = None
    runs: NonNegInt = 0
    model_calls: NonNegInt = 0
    layers: dict[Name, _Layer] = Field(min_length=1, max_length=MAX_LAYERS)
    sqnr: dict | list | None = None


def calibration_json(path) -> dict:
    """The calibration JSON at ``path``, validated (types, ranges, finite numbers, sizes, depth); the
    plain dict as written by ``quantgate calibrate``."""
    obj = bounded.load_json(path, what="calibration JSON", max_bytes=MAX_BYTES)
    if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
        raise InputError(f"not a quantgate calibration (expected \"schema\": \"{SCHEMA}\"; make one with "
                         "`quantgate calibrate`)", path)
    validate(CalibrationFile, obj, path, what="calibration")
    return obj


class _Scales(Strict):
    layers: dict[Name, Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0,
                                              le=3.4028234663852886e38)]] = Field(max_length=MAX_LAYERS)


def input_scales_json(path) -> dict[str, float]:
    """``--input-scales``: ``{"layers": {layer: activation amax}}`` or the flat map; every value a finite
    positive number."""
    obj = bounded.load_json(path, what="input scales file", max_bytes=MAX_BYTES)
    if isinstance(obj, dict):
        obj = {"layers": obj["layers"]} if "layers" in obj else {"layers": obj}
    if not isinstance(obj, dict):
        raise InputError('expected {"layers": {"<layer>": <activation amax>, ...}}', path)
    return {k: float(v) for k, v in validate(_Scales, obj, path, what="input scales").layers.items()}


# -- records inside activation safetensors files --------------------------------------------------------
class _RunBin(Strict):
    calls: NonNegInt
    count: NonNegInt
    zeros: NonNegInt
    sum: Float
    sumsq: NonNegFloat
    amax: NonNegFloat


class _RunLayer(Strict):
    in_features: Annotated[int, Field(strict=True, ge=1, le=1 << 24)]
    bins: dict[Annotated[str, Field(pattern=r"^\d{1,4}$")], _RunBin] = Field(min_length=1, max_length=4096)


class _Hist(Strict):
    lo: Float
    per_octave: Annotated[int, Field(strict=True, ge=1, le=1024)]
    n: Annotated[int, Field(strict=True, ge=1, le=1 << 20)]


class CalibrationRun(Strict):
    schema_: Literal["quantgate.calibration-run/1"] = Field(alias="schema")
    bins: Annotated[int, Field(strict=True, ge=1, le=4096)]
    hist: _Hist
    model_calls: NonNegInt = 0
    layers: dict[Name, _RunLayer] = Field(max_length=MAX_LAYERS)

    @model_validator(mode="after")
    def _bins_in_range(self):
        for name, la in self.layers.items():
            for b in la.bins:
                if int(b) >= self.bins:
                    raise ValueError(f"layer {name[:60]!r}: bin {b} outside 0..{self.bins - 1}")
        return self


def calibration_run(text: str, where, *, error=InputError) -> dict:
    """The statistics record of a ``QGCalibrationSave`` file (its ``quantgate_calibration`` metadata)."""
    obj = bounded.parse_json(text, where, what="calibration run record", error=error)
    validate(CalibrationRun, obj, where, what="calibration run record", error=error)
    return obj


class SamplesIndex(Strict):
    schema_: Literal["quantgate.calibration-samples/1"] = Field(alias="schema")
    layers: dict[Name, NonNegInt] = Field(max_length=MAX_LAYERS)


def samples_index(text: str, where) -> dict:
    obj = bounded.parse_json(text, where, what="samples index")
    validate(SamplesIndex, obj, where, what="samples index")
    return obj


# -- the calibration record convert writes into a file's metadata (``quantgate.calibration``) ------------------
Sha256Any = Annotated[str, Field(strict=True, pattern=r"^[0-9a-fA-F]{64}$")]


class FileCalibrationRecord(Open):
    """What ``convert --act-stats`` records of the statistics it used (quant.convert): read by verify's and the
    render gate's provenance checks and the gate's seed-overlap warning."""
    statistic: ShortText | None = None
    margin: Float | None = None
    model_sha256: Sha256Any | None = None
    seeds: list[Annotated[int, Field(strict=True, ge=0, le=2**64 - 1)]] | None = Field(default=None, max_length=100_000)
    foreign_to_source_sha256: Sha256Any | None = None


def file_calibration_record(metadata: dict | None, where) -> dict | None:
    """A file's ``quantgate.calibration`` record, validated (sha256s lower-cased), or None when the file has
    none -- or one that is not a valid record (hostile or foreign metadata: nothing is known from it; the
    candidate's metadata is anyone's, so it never ends a run)."""
    text = (metadata or {}).get("quantgate.calibration")
    if not isinstance(text, str) or not text:
        return None
    try:
        obj = bounded.parse_json(text, where, what="quantgate.calibration metadata", max_bytes=1 << 20)
        validate(FileCalibrationRecord, obj, where, what="quantgate.calibration metadata")
    except InputError:
        return None
    for k in ("model_sha256", "foreign_to_source_sha256"):
        if isinstance(obj.get(k), str):
            obj[k] = obj[k].lower()
    return obj
