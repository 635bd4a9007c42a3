"""W4A4 ConvRot (ComfyUI ``convrot_w4a4``, ``TensorCoreConvRotW4A4Layout``): signed int4 weights of the
ConvRot-rotated weight with one F32 scale per output row, int4 activations at run time.

Weight: the rotated weight (:mod:`quant.formats.convrot`, group 256 or 64 along K) quantized per row to
``round(w / s)`` in [-7, 7] with ``s = amax(|row|) / 7`` (computed in the weight's dtype, as kitchen does), packed
two codes per byte into I8 ``[N, K/2]`` with the EVEN column in the LOW nibble; ``weight_scale`` F32 ``[N]``.
K must be a multiple of 64 (kitchen's int4 MMA group). ComfyUI rotates every activation row with the same
Hadamard group and quantizes it to int4 per row (``convrot_w4a4_linear``). Bit-exact with kitchen 0.2.40's eager
``quantize_convrot_w4a4_weight``.
"""
from __future__ import annotations

from . import convrot
from .base import CARRIER_COMFY_QUANT, Companion, Format, shape_rule
from quant.comfy.versions import QUANT_ALGOS_SINCE
from .int8_convrot import MIN_COMFY as INT8_CONVROT_MIN
from .int8 import kernel_op

INT4_MAX = 7.0
QUANT_GROUP = 64                  # kitchen's int4 MMA group: K must be a multiple of it
GROUPS = (256, 64)                # ConvRot group sizes that keep K % QUANT_GROUP == 0 meaningful

shape_rule("int4_packed", lambda n, k: (n, k // 2), "[N, K/2], two signed int4 per byte, even column in the low nibble")
shape_rule("N", lambda n, k: (n,), "[N] (one per output row)")


def quantize_w4a4(w, group: int, *, name=None):
    """-> (packed int8 [n, k/2], scale float32 [n])."""
    import torch
    from ..errors import InputError
    from ..kernels.common import ensure_finite
    if not w.is_floating_point():
        raise InputError(f"cannot quantize a {w.dtype} tensor to w4a4", name)
    ensure_finite(w, name)
    r = convrot.rotate(w, group)
    amax = r.abs().amax(dim=-1, keepdim=True).clamp(min=1e-10)       # in the weight's dtype (kitchen)
    s = amax / INT4_MAX
    q = (r / s).round_().clamp_(-INT4_MAX, INT4_MAX).to(torch.int8)
    return convrot.pack_int4(q), s.reshape(-1).to(torch.float32)


def dequantize_w4a4(packed, scale, group: int, dtype=None):
    import torch
    w = convrot.unpack_int4(packed).to(torch.float32) * scale.to(device=packed.device, dtype=torch.float32).reshape(-1, 1)
    return convrot.rotate(w, group).to(dtype or torch.float32)


class W4a4Convrot(convrot.RotatedFourBit, Format):
    name = "w4a4-convrot"
    order = 6
    kernel = "w4a4"
    comfy_format = "convrot_w4a4"
    carrier = CARRIER_COMFY_QUANT
    file_suffix = "_w4a4_convrot"
    full_scale = INT4_MAX
    decode_scale_key = "weight_scale"
    input_scale_key = "input_scale"
    four_bit = True
    sensitive_actions = {"fp8": "int8_convrot"}     # the preset's 8-bit sensitive layers: int8 ConvRot (same GPUs)
    fallback_action = "int8_convrot"
    companions = (
        Companion("weight", ("I8",), "int4_packed", True, "signed int4 codes of the rotated weight, two per byte",
                  missing="the layer has scales but no weight"),
        Companion("weight_scale", ("F32",), "N", True, "per-row decode multiplier amax(|rotated row|)/7",
                  positive_finite=True, missing="ComfyUI fails with 'Missing ConvRot W4A4 weight scale'"),
    )
    per_layer_keys = ("weight", "bias", "weight_scale", "comfy_quant")
    min_comfy = INT8_CONVROT_MIN   # its 8-bit layers are int8 ConvRot
    loads_since = QUANT_ALGOS_SINCE["convrot_w4a4"]
    activation = ("rotated online by the layer's Hadamard group, then quantized to signed int4 per row at run time "
                  "(comfy-kitchen's convrot_w4a4_linear; int4 x int4 MMA); no input_scale is stored")
    native_sm = (7, 5)
    max_rel_error = 0.25
    min_cosine = 0.96
    doc_written = ("comfy_quant `convrot_w4a4`: Hadamard-rotated weight (group 256, 64 where K needs), signed int4 "
                   "in [-7, 7] packed into I8 `[N, K/2]` (even column in the low nibble), F32 `weight_scale` `[N]`; "
                   "int8 ConvRot for the preset's sensitive layers and where K % 64 ≠ 0")
    doc_comfy = f"≥ {INT8_CONVROT_MIN} (convrot_w4a4 itself since {QUANT_ALGOS_SINCE['convrot_w4a4']}, the int8 ConvRot layers need the 0.33 tree); native int4 on NVIDIA SM ≥ 7.5"
    description = ("ComfyUI convrot_w4a4: ConvRot-rotated weight quantized per row to signed int4 (I8 [N, K/2], "
                   "low nibble = even column), F32 weight_scale [N]; activations rotated and quantized to int4 "
                   "per row at run time.")
    runtime_note = "w4a4 runs natively on NVIDIA SM >= 7.5 (int4 tensor cores), emulated elsewhere"

    def refuses(self, n, k):
        if k % QUANT_GROUP:
            return f"K={k} is not a multiple of {QUANT_GROUP} (kitchen's int4 group)"
        return None

    def conf_problems(self, conf, n, k):
        p, out = self.rotation_problems(conf, k)
        ld = conf.get("linear_dtype", p.get("linear_dtype", "int4"))
        if ld not in ("int4", "int8"):
            out.append(f"linear_dtype {ld!r} is not 'int4' or 'int8' (kitchen refuses the layer)")
        return out

    def conf_extra(self, n, k) -> dict:
        return {"convrot_groupsize": convrot.group_for(k, GROUPS)}

    def stored_nk(self, weight_shape):
        return weight_shape[0], weight_shape[1] * 2

    def quantize(self, w, *, backend=None, name=None) -> dict:
        why = self.refuses(*w.shape)
        if why:
            from ..errors import ShapeError
            raise ShapeError(f"w4a4-convrot: {why}", name)
        g = convrot.group_for(w.shape[1], GROUPS)
        op = kernel_op(backend, w.device, "quantize_w4a4_convrot", None)     # a kernel (Triton on CUDA) or None
        r = op(w, g, name=name, check_finite="sync") if op is not None and w.is_floating_point() and w.dim() == 2 else None
        q, s = r if r is not None else quantize_w4a4(w, g, name=name)
        return {"weight": q, "weight_scale": s}

    def quantize_async(self, tq, x):
        if x.dim() != 2 or self.refuses(*x.shape):
            return None                       # quantize() raises the ShapeError
        p, s, amax = tq.quantize_w4a4_convrot_async(x, convrot.group_for(x.shape[1], GROUPS))
        return {"weight": p, "weight_scale": s}, amax

    def dequantize(self, tensors, shape=None, dtype=None, *, backend=None, group: int | None = None):
        q = tensors["weight"]
        return dequantize_w4a4(q, tensors["weight_scale"], group or convrot.group_for(q.shape[1] * 2, GROUPS), dtype)

    def negated_weight(self, w):
        return convrot.pack_int4(-convrot.unpack_int4(w))

    def verify_group(self, conf) -> int | None:
        from .int8 import convrot_group
        return convrot_group(conf)

    def elem_bound(self, tensors, ref, conf):
        """One int4 step of the row's scale (plus what clamps above 7 s), on the rotated source."""
        from .int8 import int8_bound
        return int8_bound(tensors["weight_scale"], convrot.rotate(ref, self.verify_group(conf)), INT4_MAX)
