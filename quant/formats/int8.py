"""INT8 with per-row weight scales (ComfyUI ``int8_tensorwise``, ``TensorWiseINT8Layout``, no ConvRot).

Weight: I8 ``[N, K]``, symmetric, ``q = round(w / s_row)`` clamped to [-128, 127] with ``s_row = amax(|w_row|) / 127``
stored F32 ``[N, 1]``; decode ``q * s_row``. Activations are not stored: ComfyUI's ``int8_linear`` quantizes every
activation row to int8 at run time (dynamic, per row) and multiplies int8 x int8 -> int32. Numerics follow
comfy-kitchen 0.2.40's eager ``quantize_int8_rowwise`` bit for bit (the division happens in the weight's dtype).

The math lives here as the reference; a kernel backend may provide ``quantize_int8_rowwise`` (same bytes).
"""
from __future__ import annotations

from .base import CARRIER_COMFY_QUANT, Companion, Format, shape_rule
from quant.comfy.versions import QUANT_ALGOS_SINCE

shape_rule("N1", lambda n, k: (n, 1), "[N, 1] (one per output row)")

INT8_MAX = 127.0
_MISSING = "ComfyUI fails with 'Missing INT8 weight scale'"
DYNAMIC_INT8 = ("dynamic int8 per activation row at run time (comfy-kitchen's int8_linear: each row of x is "
                "scaled by amax/127 and rounded; int8 x int8 matmul); no input_scale is stored")


def quantize_rowwise(x, *, name=None):
    """-> (q int8 [n, k], scale float32 [n, 1]); bit-exact with kitchen's eager ``quantize_int8_rowwise``."""
    import torch
    from ..errors import InputError
    from ..kernels.common import ensure_finite
    if not x.is_floating_point():
        raise InputError(f"cannot quantize a {x.dtype} tensor to int8", name)
    ensure_finite(x, name)
    amax = x.abs().amax(dim=-1, keepdim=True)
    scale = (amax.float() / INT8_MAX).clamp(min=1e-30)
    s = scale.to(x.dtype)                                     # the division runs in the weight's dtype
    s = torch.where(s == 0, torch.full_like(s, torch.finfo(x.dtype).tiny), s)
    q = (x / s).round_().clamp_(-128.0, 127.0).to(torch.int8)
    return q, scale


def dequantize_rowwise(q, scale, dtype=None):
    import torch
    return (q.to(torch.float32) * scale.to(device=q.device, dtype=torch.float32)).to(dtype or torch.float32)


def int8_bound(scale, y, qmax: float = INT8_MAX):
    """|code * s - y| <= s + max(|y| - qmax s, 0) for every element when each code is one of y/s's two integer
    neighbours (clamped at +-qmax); ``scale`` per row [n, 1] / [n] or one scalar, ``y`` float32 [n, k]."""
    import torch
    s = scale.to(torch.float32)
    s = s.reshape(-1, 1) if s.numel() > 1 else s.reshape(())
    return torch.clamp(y.abs() - qmax * s, min=0.0).add_(s)


def kernel_op(backend, device, op: str, fallback):
    """The backend's ``op`` when it has one (a fast kernel writing the same bytes), else ``fallback``."""
    from ..kernels import get_backend
    be = backend or get_backend(device)
    return getattr(be, op, None) or fallback


class Int8(Format):
    name = "int8"
    order = 3
    kernel = "int8"
    comfy_format = "int8_tensorwise"
    carrier = CARRIER_COMFY_QUANT
    file_suffix = "_int8"
    full_scale = INT8_MAX
    decode_scale_key = "weight_scale"
    input_scale_key = "input_scale"
    companions = (
        Companion("weight", ("I8",), "NK", True, "int8 codes, w / weight_scale rounded to nearest",
                  missing="the layer has scales but no weight"),
        Companion("weight_scale", ("F32",), "N1", True, "per-row decode multiplier amax(|row|)/127",
                  alt_shapes=("scalar",), positive_finite=True, missing=_MISSING),
    )
    per_layer_keys = ("weight", "bias", "weight_scale", "comfy_quant")
    min_comfy = QUANT_ALGOS_SINCE["int8_tensorwise"]
    loads_since = QUANT_ALGOS_SINCE["int8_tensorwise"]
    activation = DYNAMIC_INT8
    native_sm = (7, 5)
    max_rel_error = 0.08
    min_cosine = 0.995
    doc_written = ("comfy_quant `int8_tensorwise`: I8 weight `[N, K]`, F32 `weight_scale` `[N, 1]` = row amax/127; "
                   "no input_scale (activations: dynamic int8 per row)")
    doc_comfy = f"≥ {QUANT_ALGOS_SINCE['int8_tensorwise']}; native int8 matmul on NVIDIA SM ≥ 7.5"
    description = ("ComfyUI int8_tensorwise with per-row scales: I8 weight [N, K], F32 weight_scale [N, 1] "
                   "(row amax / 127); ComfyUI quantizes activations dynamically per row (int8 x int8 matmul, "
                   "native on SM >= 7.5).")
    runtime_note = "int8 runs natively on NVIDIA SM >= 7.5 (Turing and newer), dequantized elsewhere"

    def matches_conf(self, conf: dict) -> bool:
        return not _convrot_flag(conf)

    def quantize(self, w, *, backend=None, name=None) -> dict:
        op = kernel_op(backend, w.device, "quantize_int8_rowwise", None)     # a kernel (Triton on CUDA) or None
        r = op(w, name=name, check_finite="sync") if op is not None and w.is_floating_point() else None
        q, s = r if r is not None else quantize_rowwise(w, name=name)
        return {"weight": q, "weight_scale": s}

    def quantize_async(self, tq, x):
        q, s, amax = tq.quantize_int8_rows_async(x)
        return {"weight": q, "weight_scale": s}, amax

    def dequantize(self, tensors, shape=None, dtype=None, *, backend=None):
        s = tensors["weight_scale"]
        return dequantize_rowwise(tensors["weight"], s.reshape(-1, 1) if s.numel() > 1 else s.reshape(()), dtype)

    # ---- verify: the format's worst case per element (see harness.verify.row_bounds) ------------------------
    def verify_group(self, conf) -> int | None:
        """The rotation group a layer's dict declares (None: not rotated)."""
        return None

    def elem_bound(self, tensors, ref, conf):
        """Per-element error bound under the file's own scales, in the domain the codes live in (here: the
        weight itself): one int8 step ``s`` (either neighbour, whatever the rounding) plus what clamps at 127 s."""
        return int8_bound(tensors["weight_scale"], ref)


def _convrot_flag(conf) -> bool:
    if not isinstance(conf, dict):
        return False
    p = conf.get("params") if isinstance(conf.get("params"), dict) else {}
    return bool(conf.get("convrot", p.get("convrot", False)))


def convrot_group(conf, default: int = 256) -> int:
    """The ConvRot group size a layer's comfy_quant dict declares (as ComfyUI reads it: top level, then params)."""
    p = conf.get("params") if isinstance(conf.get("params"), dict) else {}
    return conf.get("convrot_groupsize", p.get("convrot_groupsize", default))
