"""MXFP8 (OCP microscaling, ComfyUI ``mxfp8``, ``TensorCoreMXFP8Layout``): float8_e4m3fn codes with one E8M0
(power-of-two) scale per 32 consecutive elements along K.

Weight: F8_E4M3 ``[rup(N,32), rup(K,32)]`` (zero padded when N or K is not a multiple of 32, as ComfyUI pads);
block scales: the biased exponents ``e = clamp(ceil(log2(amax_block / 448)) + 127, 0, 254)`` (0 for an all-zero
block) as U8 in cuBLAS's 128x4 swizzled layout ``[rup(rup(N,32),128), rup(rup(K,32)/32,4)]`` (ComfyUI views them
as float8_e8m0fnu). Decode ``code * 2**(e - 127)``. Bit-exact with comfy-kitchen 0.2.40's eager ``quantize_mxfp8``.
"""
from __future__ import annotations

from ..kernels.facts import E4M3_MAX, rup
from .base import CARRIER_COMFY_QUANT, Companion, Format, shape_rule
from quant.comfy.versions import QUANT_ALGOS_SINCE

BLOCK = 32
E8M0_BIAS = 127


def padded_shape(n: int, k: int) -> tuple[int, int]:
    return rup(n, BLOCK), rup(k, BLOCK)


def scale_shape(n: int, k: int) -> tuple[int, int]:
    np_, kp = padded_shape(n, k)
    return rup(np_, 128), rup(kp // BLOCK, 4)


shape_rule("mxfp8_padded", padded_shape, "[rup(N,32), rup(K,32)] (zero padded)")
shape_rule("mxfp8_block_scales", scale_shape,
           "[rup(rup(N,32),128), rup(rup(K,32)/32,4)] E8M0 exponents, cuBLAS 128x4 swizzled, zero padded")


def swizzle(s):
    """Row-major block scales [r, c] -> the cuBLAS 128x4 tiled layout (the same layout as NVFP4's)."""
    from ..kernels.nvfp4 import swizzle as _sw
    return _sw(s)


def unswizzle(s, r: int, c: int):
    """Inverse of :func:`swizzle`: the [r, c] row-major block scales."""
    from ..kernels.nvfp4 import unswizzle as _un
    return _un(s, r, c)


def e8m0_value(e):
    """float32 value of biased E8M0 exponents (uint8): 2**(e-127); code 0 decodes to 0 (as kitchen does)."""
    import torch
    v = (e.to(torch.int32) << 23).view(torch.float32)
    return torch.where(e == 0, torch.zeros_like(v), v)


def quantize(x, *, name=None):
    """-> (codes float8_e4m3fn [rup(n,32), rup(k,32)], swizzled E8M0 block scales uint8)."""
    import torch
    from ..errors import InputError
    from ..kernels.common import ensure_finite
    if not x.is_floating_point() or x.dim() != 2:
        raise InputError(f"cannot quantize a {x.dtype}{list(x.shape)} tensor to mxfp8", name)
    ensure_finite(x, name)
    n, k = x.shape
    np_, kp = padded_shape(n, k)
    if (np_, kp) != (n, k):
        x = torch.nn.functional.pad(x, (0, kp - k, 0, np_ - n))
    xb = x.reshape(np_, kp // BLOCK, BLOCK)
    amax = xb.abs().amax(dim=-1)
    need = (amax.float() / E4M3_MAX).clamp(min=2.0 ** -127)
    e = (torch.ceil(torch.log2(need)).to(torch.int32) + E8M0_BIAS).clamp(0, 254).to(torch.uint8)
    zero = amax == 0
    s = torch.where(zero, torch.ones(1, dtype=torch.float32, device=x.device), e8m0_value(e))
    t = xb.float() / s.unsqueeze(-1)
    t = torch.where(zero.unsqueeze(-1), torch.zeros_like(t), t).clamp_(-E4M3_MAX, E4M3_MAX)
    q = t.reshape(np_, kp).to(torch.float8_e4m3fn)
    e = torch.where(zero, torch.zeros_like(e), e)
    return q, swizzle(e)


def dequantize(q, scales, shape=None, dtype=None):
    import torch
    np_, kp = q.shape
    e = unswizzle(scales.view(torch.uint8), np_, kp // BLOCK)
    out = (q.to(torch.float32).reshape(np_, kp // BLOCK, BLOCK) * e8m0_value(e).unsqueeze(-1)).reshape(np_, kp)
    if shape is not None:
        out = out[: shape[0], : shape[1]]
    return out.to(dtype or torch.float32)


class Mxfp8(Format):
    name = "mxfp8"
    order = 5
    kernel = "mxfp8"
    comfy_format = "mxfp8"
    carrier = CARRIER_COMFY_QUANT
    file_suffix = "_mxfp8"
    full_scale = E4M3_MAX
    decode_scale_key = "weight_scale"
    block_scale_key = "weight_scale"
    input_scale_key = "input_scale"
    companions = (
        Companion("weight", ("F8_E4M3",), "mxfp8_padded", True, "e4m3 codes, pre-divided by their block's 2**e",
                  missing="the layer has scales but no weight"),
        Companion("weight_scale", ("U8",), "mxfp8_block_scales", True,
                  "E8M0 block exponents (one per 32 along K), cuBLAS 128x4 swizzled",
                  missing="ComfyUI fails with 'Missing MXFP8 block scales'"),
    )
    per_layer_keys = ("weight", "bias", "weight_scale", "input_scale", "comfy_quant")
    min_comfy = QUANT_ALGOS_SINCE["mxfp8"]
    loads_since = QUANT_ALGOS_SINCE["mxfp8"]
    activation = ("dynamic MXFP8 per 32-element block at run time on Blackwell (SM >= 10, torch >= 2.10); "
                  "elsewhere ComfyUI dequantizes the weight and multiplies in bf16 (no activation quantization)")
    native_sm = (10, 0)
    activation_short = "dynamic per-32 block (Blackwell native)"
    max_rel_error = 0.08
    min_cosine = 0.995
    doc_written = ("F8_E4M3 weight `[rup(N,32), rup(K,32)]`, U8 E8M0 block exponents (one per 32 along K) in "
                   "the cuBLAS 128×4 swizzled layout; no input_scale")
    doc_comfy = (f"≥ {QUANT_ALGOS_SINCE['mxfp8']} with a comfy-kitchen that has MXFP8; native on SM ≥ 10, "
                 "dequantized elsewhere")
    description = ("ComfyUI mxfp8: F8_E4M3 weight padded to multiples of 32, U8 E8M0 block scales (one per 32 "
                   "along K) swizzled 128x4; activations quantized per block at run time on Blackwell only.")
    runtime_note = "mxfp8 runs natively only on Blackwell (SM >= 10); ComfyUI dequantizes it elsewhere"

    def stored_nk(self, weight_shape):
        return tuple(weight_shape)            # padded dims

    def block_scales_fit(self, weight_shape, scales_shape) -> bool:
        return len(scales_shape) == 2 and tuple(scales_shape) == scale_shape(*weight_shape)

    def quantize(self, w, *, backend=None, name=None) -> dict:
        from .int8 import kernel_op
        op = kernel_op(backend, w.device, "quantize_mxfp8", None)     # a kernel (Triton on CUDA) or None
        r = op(w, name=name, check_finite="sync") if op is not None and w.is_floating_point() and w.dim() == 2 else None
        q, s = r if r is not None else quantize(w, name=name)
        return {"weight": q, "weight_scale": s}

    def quantize_async(self, tq, x):
        if x.dim() != 2:
            return None                       # quantize() raises the InputError
        q, s, amax = tq.quantize_mxfp8_async(x)
        return {"weight": q, "weight_scale": s}, amax

    def dequantize(self, tensors, shape=None, dtype=None, *, backend=None):
        return dequantize(tensors["weight"], tensors["weight_scale"], shape, dtype)

    block_size = BLOCK

    def scaled_up(self, scale):
        """E8M0 exponents +3: every block scale x8."""
        import torch
        return torch.where(scale > 0, scale + 3, scale)

    def verify_group(self, conf) -> int | None:
        return None

    def elem_bound(self, tensors, ref, conf):
        """fp8's bound under each element's block scale u = 2**(e-127): one e4m3 spacing (<= |x|/8, u 2**-9 for
        subnormals) plus what clamps above 448 u."""
        import torch
        n, k = ref.shape
        q = tensors["weight"]
        e = unswizzle(tensors["weight_scale"].view(torch.uint8), q.shape[0], q.shape[1] // BLOCK)
        u = e8m0_value(e)[:n].repeat_interleave(BLOCK, dim=1)[:, :k]
        ax = ref.abs()
        return torch.maximum(ax / 8.0, u * 2.0 ** -9).add_(torch.clamp(ax - E4M3_MAX * u, min=0.0))
