"""FP8 e4m3fn per-tensor quantization (ComfyUI ``float8_e4m3fn`` and legacy ``scaled_fp8``).

Round-to-nearest is bit-exact with comfy-kitchen's ``quantize_per_tensor_fp8`` for the same scale:
the reciprocal of the scale is taken in the input dtype, the product is clamped to +-448 and cast
(round-to-nearest-even) to float8_e4m3fn. One deliberate exception: an fp16 tensor whose 1/scale
overflows fp16 (kitchen then saturates every value) is scaled in float32.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .common import E4M3_MAX, FP8_DTYPE, checked_amax, const, per_tensor_scale, scale_of

FP8_MAX = E4M3_MAX


def weight_scale(x: torch.Tensor) -> torch.Tensor:
    """Per-tensor decode scale amax(|x|)/448 as a float32 0-d tensor (1.0 for an all-zero tensor)."""
    return per_tensor_scale(x, FP8_MAX)


def quantize(x: torch.Tensor, scale: torch.Tensor | None = None, *, name: str | None = None,
             check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(q, scale)`` with ``q`` float8_e4m3fn of x's shape and ``scale`` float32 0-d.

    ``x ~= q.float() * scale``. ``scale`` defaults to amax/448.
    """
    if not x.is_floating_point():
        raise InputError(f"cannot quantize a {x.dtype} tensor to fp8", name)
    if check_finite or scale is None:
        amax = checked_amax(x, name, check_finite)          # one pass: the check and the scale
        if scale is None:
            scale = scale_of(amax, FP8_MAX)
    scale = scale.to(device=x.device, dtype=torch.float32).reshape(())
    inv = const(1.0, scale) / scale          # true division on CPU and CUDA alike
    if x.dtype == torch.float16 and float(inv) > torch.finfo(torch.float16).max:
        # 1/scale overflows fp16 (a tensor with amax < ~0.0068): kitchen's kernel would turn every
        # value into +-448; compute in float32 instead (the only deviation from kitchen's bits).
        t = x.to(torch.float32) * inv
    else:
        t = x * inv.to(x.dtype)
    t.clamp_(-FP8_MAX, FP8_MAX)
    return t.to(FP8_DTYPE), scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return q.to(dtype) * scale.to(device=q.device, dtype=dtype)
