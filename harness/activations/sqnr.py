"""Per-layer output error of a quantized Linear on held-out activations, by activation policy.

For each layer with held-out input rows x (recorded by ``quantgate calibrate --holdout-seeds``):
``y_ref = x @ W.T`` with the source weight; ``y = A(x) @ deq(Q(W)).T`` with the weight quantized
to the format (quantgate's kernels, decoded by comfy-kitchen) and the input fake-quantized as the
native kernel would under each activation policy (the same comfy-kitchen reference functions the
render gate's emulation node uses). SQNR = 10 log10(sum y_ref^2 / sum (y - y_ref)^2), in dB.

Policies: ``weight-only`` (activations untouched: full_precision_matrix_mult, or a GPU without the
native path), ``none`` (no input_scale: fp8 casts at scale 1.0, NVFP4 takes a dynamic global scale
per call), ``calibrated-amax``, ``calibrated-pNN`` (the calibration's statistic / full scale),
``weight-derived`` (input_scale = the weight's own scale: the 65x bug), ``unit`` (input_scale 1.0).
"""
from __future__ import annotations

import math
import statistics

import torch

from quant import formats
from quant.formats import get as _format       # table()'s parameter ``formats`` shadows the module
from quant.activations.statistics import percentile_key

FORMATS = ("fp8", "nvfp4")
ACT_BLOCK = 16          # the block of the emulated block-scaled activation quantization (quantgate_calibration)


def _fake():
    from harness.custom_nodes.quantgate_calibration import FAKE
    return FAKE


def _input_scale(fmt: str, amax: float) -> float:
    return float(formats.get(fmt).activation_scale(amax))


def quantized_weight(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, float]:
    """(dequantized weight [N, K] f32, the weight's own scale: weight_scale or weight_scale_2)."""
    import comfy_kitchen as ck
    w = w.float()
    f = formats.get(fmt)
    t = f.quantize(w)
    with ck.use_backend("eager"):
        if f.block_scale_key is None:
            s = t[f.decode_scale_key]
            return ck.dequantize_per_tensor_fp8(t["weight"], s, torch.float32), float(s)
        s2 = t[f.decode_scale_key]
        d = ck.dequantize_nvfp4(t["weight"], s2, t[f.block_scale_key], torch.float32)[: w.shape[0], : w.shape[1]]
        return d, float(s2)


def _db(ref: torch.Tensor, y: torch.Tensor) -> float:
    num = float((ref.double() ** 2).sum())
    den = float(((y.double() - ref.double()) ** 2).sum())
    if den == 0:
        return math.inf
    return round(10 * math.log10(num / den), 3) if num > 0 else -math.inf


def policies(fmt: str, cal_layer: dict, percentiles, w_scale: float) -> dict[str, tuple[str, float | None]]:
    """name -> ('off' | 'fake', input_scale or None for the kernel's default)."""
    out = {"weight-only": ("off", None), "none": ("fake", None),
           "calibrated-amax": ("fake", _input_scale(fmt, cal_layer["amax"]))}
    for p in percentiles:
        k = percentile_key(p)
        if cal_layer.get(k, 0) > 0:
            out[f"calibrated-{k}"] = ("fake", _input_scale(fmt, cal_layer[k]))
    out["weight-derived"] = ("fake", w_scale)
    out["unit"] = ("fake", 1.0)
    return out


def layer_sqnr(w: torch.Tensor, xs: list[torch.Tensor], fmt: str, cal_layer: dict, percentiles,
               bias: torch.Tensor | None = None) -> dict[str, float]:
    fake = _fake()[fmt]
    wd, ws = quantized_weight(w, fmt)
    wf = w.float()
    x = torch.cat(xs)
    ref = x @ wf.T
    out = {}
    for name, (mode, scale) in policies(fmt, cal_layer, percentiles, ws).items():
        xq = x if mode == "off" else torch.cat([fake(c, scale) for c in xs])   # per call: dynamic = per call
        out[name] = _db(ref, xq @ wd.T)
    return out


def table(source, calib: dict, samples: dict[str, list[torch.Tensor]], formats=FORMATS,
          percentiles=(99.9, 99.99), log=None) -> dict:
    """{"formats": {fmt: {"layers": {layer: {policy: dB}}, "median_db": {policy: dB}}}} for every
    calibrated layer that has held-out rows and a 2-D weight in ``source``."""
    from quant.activations.statistics import PREFIXES
    from quant.sources import open_source
    res = {"percentiles": list(percentiles), "formats": {}}
    with open_source(source) as src:
        keys = set(src.keys())

        def weight_key(layer):
            for p in ("",) + PREFIXES:
                k = f"{p}{layer}.weight"
                if k in keys:
                    return k
            return None
        todo = []
        for layer, xs in samples.items():
            la = calib["layers"].get(layer)
            k = weight_key(layer)
            if la is None or k is None or not xs:
                continue
            if len(src.info(k).shape) != 2 or src.info(k).shape[1] != xs[0].shape[-1]:
                continue
            todo.append((layer, k, la))
        for fmt in formats:
            layers = {}
            for layer, k, la in todo:
                w = src.get(k)
                if _format(fmt).block_scale_key is not None and w.shape[1] % ACT_BLOCK:
                    continue                  # the emulated activation quantization needs whole blocks
                layers[layer] = layer_sqnr(w, samples[layer], fmt, la, percentiles)
            names = list(dict.fromkeys(p for v in layers.values() for p in v))
            med = {}
            for p in names:
                vals = [v[p] for v in layers.values() if p in v and math.isfinite(v[p])]
                med[p] = round(statistics.median(vals), 3) if vals else None
            res["formats"][fmt] = {"layers": layers, "median_db": med}
    return res


def format_table(res: dict) -> list[str]:
    lines = []
    for fmt, d in res["formats"].items():
        if not d["layers"]:
            continue
        pols = list(d["median_db"])
        lines.append(f"{fmt}: per-layer output SQNR (dB) on held-out activations ({len(d['layers'])} layers)")
        w = max(len(n) for n in d["layers"])
        lines.append("  " + "layer".ljust(w) + "  " + "  ".join(p.rjust(max(8, len(p))) for p in pols))
        rows = list(d["layers"].items()) + [("median", d["median_db"])]
        for name, v in rows:
            cells = []
            for p in pols:
                x = v.get(p)
                cells.append(("-" if x is None else f"{x:.2f}").rjust(max(8, len(p))))
            lines.append("  " + name.ljust(w) + "  " + "  ".join(cells))
    return lines


def html_section(res: dict, source: str = "") -> str:
    """The SQNR table for report.html (median per policy and per layer, each format)."""
    import html as _h
    o = ["<h2>Activation policies: per-layer output SQNR on held-out activations</h2>",
         "<p class='muted'>From the calibration" + (f" <code>{_h.escape(source)}</code>" if source else "")
         + ": y = A(x)·deq(Q(W))ᵀ against x·Wᵀ per quantized Linear, x = held-out input rows recorded in "
         "ComfyUI, A = the activation quantization each policy implies (comfy-kitchen reference). dB, higher "
         "is better.</p>"]
    for fmt, d in res.get("formats", {}).items():
        if not d.get("layers"):
            continue
        pols = list(d["median_db"])
        o.append(f"<h3>{_h.escape(fmt)} ({len(d['layers'])} layers)</h3><table><tr><th>layer</th>"
                 + "".join(f"<th>{_h.escape(p)}</th>" for p in pols) + "</tr>")
        for name, v in [("median", d["median_db"])] + list(d["layers"].items()):
            o.append(f"<tr><td>{'<b>median</b>' if name == 'median' else _h.escape(name)}</td>" + "".join(
                f"<td class='num'>{'' if v.get(p) is None else f'{v[p]:.2f}'}</td>" for p in pols) + "</tr>")
        o.append("</table>")
    return "\n".join(o)
