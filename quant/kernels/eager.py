"""The reference backend: plain torch on any device, round-to-nearest-even with the same scales as
comfy-kitchen: NVFP4 bit-exact with kitchen's eager ``quantize_nvfp4``; FP8 bit-exact with kitchen's GPU
kernels (fp32 division by the scale), not with its eager path (a bf16 reciprocal; see kernels/fp8.py). Fast backends are measured against it."""
from __future__ import annotations

import torch

from . import fp8 as _fp8
from . import nvfp4 as _nv
from .registry import ANY, REQUIRED_OPS


class EagerBackend:
    name = "eager"
    priority = 0            # the fallback: any faster backend that is available wins
    ops = {op: ANY for op in REQUIRED_OPS}     # every required op, any tensor: the end of every chain

    def available(self, device="cpu") -> bool:
        return True

    def quantize_fp8(self, w: torch.Tensor, scale: torch.Tensor | None = None, *, name: str | None = None,
                     check_finite: str = "sync"):
        """-> (q float8_e4m3fn [N, K], scale float32 0-d). Non-finite input raises here (``check_finite``
        "deferred" too: eager never defers)."""
        return _fp8.quantize(w, scale, name=name)

    def quantize_nvfp4(self, w: torch.Tensor, global_scale: torch.Tensor | None = None, *, name: str | None = None):
        """-> (packed U8, swizzled e4m3 block scales, weight_scale_2 float32 0-d)"""
        return _nv.quantize(w, global_scale, name=name)

    def dequantize_fp8(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32):
        return _fp8.dequantize(q, scale, dtype)

    def dequantize_nvfp4(self, packed: torch.Tensor, scales: torch.Tensor, s2: torch.Tensor, n: int, k: int,
                         dtype: torch.dtype = torch.float32):
        return _nv.dequantize(packed, scales, s2, (n, k), dtype)

    def __repr__(self):
        return "<kernel backend eager>"
