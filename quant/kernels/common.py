"""Small helpers every kernel shares (no format knowledge).

Constants are the number formats' own: the largest finite e4m3fn value and the largest E2M1 magnitude.
"""
from __future__ import annotations

import torch

from ..errors import InputError

from .facts import E2M1_MAX, E4M3_MAX, rup  # noqa: F401  (torch-free facts, re-exported)

FP8_DTYPE = torch.float8_e4m3fn


def const(v: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d float32 constant on ``like``'s device. Dividing by a Python scalar on CUDA is compiled to
    a multiplication by its reciprocal (not IEEE division), which would make GPU files differ from CPU
    files; dividing by a device tensor is a true division on every device."""
    return torch.tensor(v, dtype=torch.float32, device=like.device)


def amax_abs(x: torch.Tensor) -> torch.Tensor:
    """max |x| as float32 0-d, without materialising |x|."""
    if not x.numel():
        return torch.zeros((), dtype=torch.float32, device=x.device)
    lo, hi = torch.aminmax(x)
    return torch.maximum(lo.abs(), hi.abs()).to(torch.float32)


def ensure_finite(x: torch.Tensor, name: str | None) -> None:
    """Refuse inf/NaN input (aminmax propagates both: one cheap pass in the common case)."""
    if not bool(torch.isfinite(amax_abs(x))):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"tensor has {bad} non-finite values (inf/NaN); refusing to quantize", name)


def per_tensor_scale(x: torch.Tensor, full_scale: float) -> torch.Tensor:
    """amax(|x|)/full_scale as float32 0-d (1.0 for an all-zero tensor)."""
    return scale_of(amax_abs(x), full_scale)


def checked_amax(x: torch.Tensor, name: str | None, check_finite: bool = True) -> torch.Tensor:
    """max |x| (float32 0-d), refusing inf/NaN when ``check_finite``: one pass serves the check and
    the per-tensor scale."""
    amax = amax_abs(x)
    if check_finite and not bool(torch.isfinite(amax)):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"tensor has {bad} non-finite values (inf/NaN); refusing to quantize", name)
    return amax


def scale_of(amax: torch.Tensor, full_scale: float) -> torch.Tensor:
    """amax/full_scale as float32 0-d (1.0 for an all-zero tensor)."""
    s = amax / const(full_scale, amax)
    return torch.where(s > 0, s, torch.ones_like(s)).reshape(())
