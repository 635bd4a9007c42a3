"""How close a decoded weight is to its source: relative error, cosine and the best scale factor."""
from __future__ import annotations

import math

import torch


def metrics(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float, float]:
    """(relative L2 error, cosine, best factor got->ref) from three dot products (no temporaries)."""
    a = ref.reshape(-1)
    b = got.reshape(-1)
    na2, nb2, dot = float(torch.dot(a, a)), float(torch.dot(b, b)), float(torch.dot(a, b))
    if not all(math.isfinite(x) for x in (na2, nb2, dot)):
        return math.inf, -1.0, math.nan
    return _from_dots(na2, nb2, dot)


def _from_dots(na2: float, nb2: float, dot: float) -> tuple[float, float, float]:
    na, nb = math.sqrt(na2), math.sqrt(nb2)
    nd = math.sqrt(max(na2 + nb2 - 2 * dot, 0.0))
    rel = nd / na if na > 0 else (0.0 if nb == 0 else math.inf)
    cos = dot / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    alpha = dot / nb2 if nb2 > 0 else math.nan       # best factor got -> ref
    return rel, cos, alpha


def from_sums(na2: float, nb2: float, err2: float) -> tuple[float, float, float]:
    """(rel, cos, alpha) from |ref|^2, |got|^2 and |got - ref|^2 (the error measured directly)."""
    na, nb = math.sqrt(na2), math.sqrt(nb2)
    dot = (na2 + nb2 - err2) / 2
    rel = math.sqrt(max(err2, 0.0)) / na if na > 0 else (0.0 if nb == 0 else math.inf)
    cos = dot / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    alpha = dot / nb2 if nb2 > 0 else math.nan
    return rel, cos, alpha


def fp8_code_metrics(ck, w, scale, ref_bf: torch.Tensor, counts=None) -> tuple[float, float, float]:
    """Per-tensor fp8 dequantization is elementwise: x_hat = D(code) with D = comfy-kitchen's
    ``dequantize_per_tensor_fp8`` at this layer's scale. So D is evaluated (by kitchen) on all 256
    codes, and the metrics use per-code sums of the source: dot = sum_c D(c) * sum_{i:code_i=c} x_i,
    |x_hat|^2 = sum_c D(c)^2 * count_c -- the same numbers as dequantizing every element, in a
    fraction of the time."""
    table = ck.dequantize_per_tensor_fp8(torch.arange(256, dtype=torch.uint8, device=w.device).view(torch.float8_e4m3fn),
                                         scale, output_type=torch.float32).double()
    codes = w.view(torch.uint8).reshape(-1)
    x = ref_bf.reshape(-1).float()
    counts = (torch.bincount(codes, minlength=256) if counts is None else counts).double()
    sums = torch.bincount(codes, weights=x, minlength=256).double()
    used = counts > 0
    if not bool(torch.isfinite(table[used]).all()):
        return math.inf, -1.0, math.nan
    na2 = float(torch.dot(x, x))
    nb2 = float((table[used] ** 2 * counts[used]).sum())
    dot = float((table[used] * sums[used]).sum())
    return _from_dots(na2, nb2, dot)


def within(fmt, rel: float, cos: float) -> bool:
    """Inside the format's limits (relative error and cosine)."""
    return rel <= fmt.max_rel_error and cos >= fmt.min_cosine
