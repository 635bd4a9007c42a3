"""Activation STATISTICS files: per-Linear statistics of the inputs recorded while ComfyUI sampled a
workflow (written by ``quantgate calibrate``; read by ``convert --act-stats`` and ``verify --calibration``),
which become each layer's ``input_scale``. (The recorded activation rows that learned rounding fits to
are activation SAMPLES: :mod:`quant.activations.samples`.)

Schema ``quantgate.calibration/1`` (JSON)::

    {"schema": "quantgate.calibration/1",
     "provenance": {"model": {"name", "sha256"}, "workflow": {...}, "seeds": [...], "comfyui": {"version"}, ...},
     "percentiles": [99.0, 99.9, 99.99, 99.999],
     "bins": {"n": 6, "t_edges": [...]},
     "layers": {"<linear>": {"in_features": K, "calls": n, "count": n, "amax": a, "p99.9": a, ...,
                             "mean": m, "std": s, "bins": [{"bin": 0, "t": [hi, lo], "amax": ...}, ...]}}}

The statistic of a layer is ``amax`` or ``pNN.N`` (a recorded percentile of |x| over every input
element the layer saw). ``input_scale`` = statistic x margin / full-scale of the format.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from quant.errors import InputError, OptionError

SCHEMA = "quantgate.calibration/1"
PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def percentile_key(p: float) -> str:
    """99.9 -> 'p99.9' (the key a percentile is stored under)."""
    return "p" + (f"{p:.6f}".rstrip("0").rstrip("."))


def statistic_key(percentile: float | None) -> str:
    return "amax" if percentile is None else percentile_key(percentile)


@dataclass
class ActivationStatistics:
    path: str
    data: dict

    @property
    def layers(self) -> dict[str, dict]:
        return self.data["layers"]

    @property
    def percentiles(self) -> list[float]:
        return list(self.data.get("percentiles", []))

    def layer(self, name: str) -> dict | None:
        """Statistics of a file's layer (its name may carry a ``model.diffusion_model.`` prefix)."""
        if name in self.layers:
            return self.layers[name]
        for p in PREFIXES:
            if name.startswith(p) and name[len(p):] in self.layers:
                return self.layers[name[len(p):]]
        return None

    def statistic(self, name: str, percentile: float | None = None, margin: float = 1.0) -> float | None:
        la = self.layer(name)
        if la is None:
            return None
        key = statistic_key(percentile)
        if key not in la:
            raise OptionError(f"{{percentile}} {percentile}: not recorded in this calibration (recorded: "
                             f"{', '.join(str(p) for p in self.percentiles) or 'none'})", self.path)
        return float(la[key]) * float(margin)

    def activation_amax(self, layer_names, percentile: float | None = None, margin: float = 1.0) -> dict[str, float]:
        """{layer: statistic x margin} for every name; a name without statistics is an error (the
        calibration belongs to another model), and so is a layer that never saw a nonzero input."""
        missing = [n for n in layer_names if self.layer(n) is None]
        if missing:
            raise InputError(f"no statistics for {len(missing)} quantized layers (first: {missing[0]!r}); "
                             "was it recorded on this model?", self.path)
        out = {}
        for n in layer_names:
            v = self.statistic(n, percentile, margin)
            if not (v > 0 and math.isfinite(v)):
                raise InputError(f"layer {n!r}: its {statistic_key(percentile)} is {v!r}; an input scale "
                                 "cannot be derived from it", self.path)
            out[n] = v
        return out


def load(path) -> ActivationStatistics:
    """The activation-statistics JSON through its one validated loader (quant.inputs: bounded parsing, a strict
    schema: types, ranges, finite numbers, sizes; a FIFO is refused, never blocks)."""
    from quant.inputs import calibration_json
    return ActivationStatistics(str(path), calibration_json(path))


def model_sha256(cal: ActivationStatistics) -> str | None:
    """sha256 of the model the statistics were recorded on (their provenance), or None when they have none."""
    prov = cal.data.get("provenance")
    model = prov.get("model") if isinstance(prov, dict) else None
    sha = model.get("sha256") if isinstance(model, dict) else None
    return sha.lower() if isinstance(sha, str) and len(sha) == 64 else None


def file_sha256(path, chunk: int = 8 << 20) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def foreign(cal: ActivationStatistics, source) -> tuple[str, str] | None:
    """(statistics' model sha256, source's sha256) when they were recorded on ANOTHER model than ``source``
    (a single checkpoint file; ``calibrate`` records one), else None. Statistics without a recorded model, or
    a sharded source, cannot be compared: None."""
    want = model_sha256(cal)
    p = Path(source)
    if want is None or not p.is_file() or p.suffix.lower() == ".json":
        return None
    got = file_sha256(p)
    return None if got == want else (want, got)


def check_model(cal: ActivationStatistics, source, *, allow_foreign: bool = False) -> tuple[str, str] | None:
    """Refuse (InputError: one line naming both sha256s) statistics recorded on another model than
    ``source``; ``allow_foreign`` returns the pair instead (the caller says so)."""
    f = foreign(cal, source)
    if f is not None and not allow_foreign:
        raise InputError(f"calibration recorded on another model: its model sha256 {f[0]} is not the source's "
                         f"{f[1]} ({Path(source).name}); --allow-foreign-calibration uses it anyway", cal.path)
    return f


__all__ = ["SCHEMA", "ActivationStatistics", "load", "percentile_key", "statistic_key", "model_sha256",
           "foreign", "check_model"]
