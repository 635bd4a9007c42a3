"""Rules on the small scale tensors' values (read with one pread each; no weight data):
finite positive scales, input_scale taken from weight statistics, implausible activation ranges."""
from __future__ import annotations

import math
import statistics

from quant.checkpoint import Structure
from quant.dtypes import FLOAT_DTYPES

from .findings import Findings

MIN_ACT_AMAX = 0.5          # an input_scale implying |x| never exceeds this clips real activations
PEER_FACTOR = 30.0          # one layer's input_scale this far below its peers' median is an outlier


def _values(st: Structure, key: str) -> list[float]:
    return st.src.values(key)               # F32/F16/BF16 scalars decoded without torch


def run(st: Structure, f: Findings) -> dict[str, dict[str, float]]:
    """Returns {layer: {suffix: value}} for scalar companions (used by the statistics check)."""
    scalars: dict[str, dict[str, float]] = {}
    for la in st.declared:
        spec = la.spec
        if spec is None:
            continue
        vals = {}
        for c in spec.companions:
            k = la.keys.get(c.suffix)
            if k is None or not c.positive_finite:
                continue
            info = st.infos[k]
            if info.dtype not in FLOAT_DTYPES or math.prod(info.shape) > 4096:
                continue                            # dtype/shape already reported
            v = _values(st, k)
            bad = [x for x in v if not (math.isfinite(x) and x > 0)]
            if bad:
                what = "not finite" if not math.isfinite(bad[0]) else ("zero" if bad[0] == 0 else "negative")
                f.error("scale.value", f".{c.suffix} is {what}: scales must be finite and > 0", [la.name])
                continue
            if len(v) == 1:
                vals[c.suffix] = v[0]
        scalars[la.name] = vals
        wname = spec.decode_scale_key
        w = vals.get(wname)
        i = vals.get(spec.input_scale_key)
        if la.legacy and not la.fpmm and i == 1.0:
            f.warning("activation.unit-scale", "scale_input is exactly 1.0, which ComfyUI drops: with a 0-element "
                                               "marker activations are cast to fp8 with scale 1.0", [la.name])
        if not la.legacy and spec.weight_only_without_input_scale and not la.fpmm and i == 1.0:
            f.warning("activation.unit-scale", "input_scale is exactly 1.0, a default rather than a calibrated value: "
                                               "ComfyUI >= 0.4 casts this layer's activations to fp8 at scale 1.0 on "
                                               "fp8 GPUs (noisy output); calibrate it or set full_precision_matrix_mult",
                      [la.name])
        if w is not None and w == 1.0:
            f.warning("scale.magnitude", "weight scale is exactly 1.0, a default rather than amax-derived "
                                         "(unit scale?); run with --source to prove the numbers", [la.name])
        if i is not None and w is not None and math.isclose(i, w, rel_tol=1e-6):
            f.error("input_scale.from-weight", f"input_scale equals {wname}: it was taken from weight statistics, not "
                                               "calibrated activations; activations get clipped or crushed", [la.name])
    _check_input_scales(st, f, scalars)
    return scalars


def _check_input_scales(st: Structure, f: Findings, scalars):
    by_fmt: dict[str, list[tuple[str, float]]] = {}
    for la in st.declared:
        if la.spec is None:
            continue
        v = scalars.get(la.name, {}).get(la.spec.input_scale_key)
        if v is not None:
            by_fmt.setdefault(la.spec, []).append((la.name, v))
    for spec, items in by_fmt.items():
        fmt, qmax = spec.name, spec.full_scale
        if len(items) >= 4 and len({v for _, v in items}) == 1 and items[0][1] != 1.0:
            f.warning("input_scale.implausible", f"all {len(items)} {fmt} layers share one input_scale "
                                                 f"({items[0][1]:.6g}): not a per-layer calibration",
                      [n for n, _ in items])
        med = statistics.median(v for _, v in items) if len(items) >= 4 else None
        for name, v in items:
            amax = v * qmax
            # header-only magnitude checks are warnings (errors under --strict): a trained model's calibrated
            # scales legitimately span > 100x (the trained tiny model: cross-attention inputs 0.04-0.19 beside
            # self-attention inputs up to 10), so a header cannot tell a crushed scale from a small activation.
            # `verify --calibration` and the render gate's activation emulation decide with evidence.
            if med is not None and v < med / PEER_FACTOR:
                f.warning("input_scale.implausible", f"input_scale is more than {PEER_FACTOR:g}x smaller than the median of "
                                                     "the file's input scales: activations would be clipped unless this "
                                                     "layer's inputs really are that small (check with --calibration)",
                          [name])
            elif amax < MIN_ACT_AMAX:
                f.warning("input_scale.implausible", f"input_scale x {qmax:g} < {MIN_ACT_AMAX}: it implies activations never exceed "
                                                     f"|x| = {MIN_ACT_AMAX}; if real activations are larger they are clipped "
                                                     "(check with --calibration)", [name])
            elif med is not None and v > med * PEER_FACTOR:
                f.warning("input_scale.implausible", f"input_scale is more than {PEER_FACTOR:g}x larger than the median "
                                                     "of the file's input scales: small activations lose precision",
                          [name])
