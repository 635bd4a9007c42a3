"""INT8 ConvRot (ComfyUI ``int8_tensorwise`` with ``"convrot": true``): the weight is rotated group-wise by a
regular Hadamard matrix (:mod:`quant.formats.convrot`) and then quantized like :mod:`quant.formats.int8` (per-row
F32 ``[N, 1]`` scales). ComfyUI rotates the activations online with the same matrix and quantizes them to int8 per
row, so ``rot(x) @ rot(W).T == x @ W.T``; the rotation spreads outlier columns over their group.

The group size is the largest of 256 / 64 / 16 dividing K and is written per layer (``convrot_groupsize``); a
layer whose K is not a multiple of 16 is written as plain per-row int8 (what Comfy-Org's converter does too).
Bytes are kitchen 0.2.40's ``quantize_int8_convrot_weight`` on the same input.
"""
from __future__ import annotations

from . import convrot
from .base import CARRIER_COMFY_QUANT, Companion, Format
from .int8 import DYNAMIC_INT8, INT8_MAX, _convrot_flag, convrot_group, dequantize_rowwise, kernel_op, quantize_rowwise

MIN_COMFY = "0.33.0"   # convrot in int8_tensorwise: present in the 0.33.0 tree (first release not verified)


def quantize_convrot(w, group: int, *, name=None):
    """-> (q int8 [n, k] of the rotated weight, scale float32 [n, 1])."""
    from ..errors import InputError
    from ..kernels.common import ensure_finite
    if not w.is_floating_point():
        raise InputError(f"cannot quantize a {w.dtype} tensor to int8", name)
    ensure_finite(w, name)
    return quantize_rowwise(convrot.rotate(w, group), name=name)


def dequantize_convrot(q, scale, group: int, dtype=None):
    import torch
    w = dequantize_rowwise(q, scale.reshape(-1, 1) if scale.numel() > 1 else scale.reshape(()), torch.float32)
    return convrot.rotate(w, group).to(dtype or torch.float32)


class Int8Convrot(Format):
    name = "int8-convrot"
    order = 4
    kernel = "int8_convrot"
    comfy_format = "int8_tensorwise"
    carrier = CARRIER_COMFY_QUANT
    file_suffix = "_int8_convrot"
    full_scale = INT8_MAX
    decode_scale_key = "weight_scale"
    input_scale_key = "input_scale"
    fallback_action = "int8"
    companions = (
        Companion("weight", ("I8",), "NK", True, "int8 codes of the ConvRot-rotated weight",
                  missing="the layer has scales but no weight"),
        Companion("weight_scale", ("F32",), "N1", True, "per-row decode multiplier amax(|rotated row|)/127",
                  positive_finite=True, missing="ComfyUI fails with 'Missing INT8 weight scale'"),
    )
    per_layer_keys = ("weight", "bias", "weight_scale", "comfy_quant")
    min_comfy = MIN_COMFY
    loads_since = MIN_COMFY
    activation = "rotated online by the layer's Hadamard group, then " + DYNAMIC_INT8
    native_sm = (7, 5)
    max_rel_error = 0.08
    min_cosine = 0.995
    doc_written = ("`int8_tensorwise` + `\"convrot\": true`: weight rotated per group of 256 (64/16 where K "
                   "needs) by a regular Hadamard, I8 `[N, K]`, F32 `weight_scale` `[N, 1]`; "
                   "`convrot_groupsize` per layer; K % 16 ≠ 0 → plain int8")
    doc_comfy = f"≥ {MIN_COMFY} (tested tree); native int8 matmul on NVIDIA SM ≥ 7.5"
    description = ("ComfyUI int8_tensorwise with ConvRot: the weight is Hadamard-rotated in groups along K "
                   "(convrot_groupsize, 256 where K allows) and quantized per row (I8 [N, K], F32 weight_scale "
                   "[N, 1]); ComfyUI rotates activations online and quantizes them per row.")
    runtime_note = "int8 runs natively on NVIDIA SM >= 7.5 (Turing and newer), dequantized elsewhere"

    def refuses(self, n, k):
        if convrot.group_for(k) is None:
            return f"K={k} is not a multiple of 16 (no ConvRot group size divides it)"
        return None

    def matches_conf(self, conf: dict) -> bool:
        return _convrot_flag(conf)

    def emulation(self, conf):
        return {"format": self.kernel, "group": convrot_group(conf)}

    def conf_problems(self, conf, n, k):
        return convrot.group_problems(convrot_group(conf), k)

    def conf_extra(self, n, k) -> dict:
        return {"convrot": True, "convrot_groupsize": convrot.group_for(k)}

    def quantize(self, w, *, backend=None, name=None) -> dict:
        g = convrot.group_for(w.shape[1])
        if g is None:
            from ..errors import ShapeError
            raise ShapeError(f"int8-convrot needs K divisible by 16, got {list(w.shape)}", name)
        op = kernel_op(backend, w.device, "quantize_int8_convrot", None)     # rotation + per-row kernel
        r = op(w, g, name=name, check_finite="sync") if op is not None and w.is_floating_point() else None
        q, s = r if r is not None else quantize_convrot(w, g, name=name)
        return {"weight": q, "weight_scale": s}

    def quantize_async(self, tq, x):
        g = convrot.group_for(x.shape[1])
        if g is None:
            return None                       # quantize() raises the ShapeError
        q, s, amax = tq.quantize_int8_convrot_async(x, g)
        return {"weight": q, "weight_scale": s}, amax

    def dequantize(self, tensors, shape=None, dtype=None, *, backend=None, group: int | None = None):
        q = tensors["weight"]
        return dequantize_convrot(q, tensors["weight_scale"], group or convrot.group_for(q.shape[1]), dtype)

    def verify_group(self, conf) -> int | None:
        return convrot_group(conf)

    def elem_bound(self, tensors, ref, conf):
        """int8's bound on the rotated source (H is orthogonal: a row's error norm is the same in both bases)."""
        from .int8 import int8_bound
        return int8_bound(tensors["weight_scale"], convrot.rotate(ref, convrot_group(conf)))


__all__ = ["Int8Convrot", "quantize_convrot", "dequantize_convrot", "convrot_group"]
