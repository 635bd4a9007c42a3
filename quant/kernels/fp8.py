"""FP8 e4m3fn per-tensor quantization (ComfyUI ``float8_e4m3fn`` and legacy ``scaled_fp8``).

Round-to-nearest the way comfy-kitchen's GPU kernels (Triton ``quantize_fp8_kernel_tl``, CUDA) and
Comfy-Org's comfy-quants converter round: the weight is taken to float32 and DIVIDED by the float32
scale (IEEE, correctly rounded), clamped to +-448 and cast (round-to-nearest-even) to float8_e4m3fn.
CPU bytes = GPU bytes (quant.kernels.triton_quant divides the same way).

comfy-kitchen's *eager* backend instead multiplies by ``(1/scale)`` rounded to the input dtype (bf16:
8 bits of reciprocal); that moves about 3 % of the codes of a bf16 weight one step, each time further
from the source, and saturates every value of an fp16 tensor whose 1/scale overflows fp16. The
division is the more accurate rounding and the one the GPU kernels write, so it is the reference.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .common import E4M3_MAX, FP8_DTYPE, checked_amax, per_tensor_scale, scale_of

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
    if x.device.type != "cpu" or x.numel() <= CHUNK_ELEMS:
        return _rows(x, scale), scale
    # CPU: bounded float32 temporaries (a 108 MB bf16 tensor would need 216 MB of them at once)
    q = torch.empty(x.shape, dtype=FP8_DTYPE)
    xf, qf = x.reshape(-1), q.view(-1)
    for i in range(0, xf.numel(), CHUNK_ELEMS):
        qf[i:i + CHUNK_ELEMS] = _rows(xf[i:i + CHUNK_ELEMS], scale)
    return q, scale


CHUNK_ELEMS = 1 << 22


def _rows(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """clamp(float32(x) / scale, +-448) -> e4m3fn, RNE. Dividing by a device tensor is an IEEE
    division on CPU and CUDA alike (a Python scalar would become a reciprocal multiply on CUDA)."""
    t = x.to(torch.float32) / scale
    t.clamp_(-FP8_MAX, FP8_MAX)
    return t.to(FP8_DTYPE)


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return q.to(dtype) * scale.to(device=q.device, dtype=dtype)
