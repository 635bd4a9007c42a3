"""The ``triton`` kernel backend: the op signatures of the kernel seam, on quant.kernels.triton_quant.

Registered in quant.kernels with a priority above eager: on a CUDA GPU (sm_89+) with triton it is
the default backend; elsewhere (CPU, or the interpreter) it reports itself unavailable. Ops take and
return device tensors; dtypes other than fp32/bf16/fp16 fall back to the eager math. Non-finite input raises the same InputError as the eager
reference (found from the amax the kernels compute anyway: one host sync per call; the pipelined
converter uses the ``*_async`` kernels and checks the amax later instead).
"""
from __future__ import annotations

import torch

from ..errors import InputError, ShapeError


def _tq():
    """The kernels module (imports triton: only when a CUDA device is asked about or used)."""
    from . import triton_quant
    return triton_quant


def _finite_or_raise(x: torch.Tensor, amax: torch.Tensor, name: str | None = None) -> None:
    if not bool(torch.isfinite(amax)):
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"tensor has {bad} non-finite values (inf/NaN); refusing to quantize", name)


def _eager():
    from .eager import EagerBackend
    return EagerBackend()


def _fits(w: torch.Tensor) -> bool:
    return w.dtype in (torch.float32, torch.bfloat16, torch.float16) and w.numel() < 2**31 and w.device.type == "cuda"


_FLOATS = (torch.float32, torch.bfloat16, torch.float16)


class TritonBackend:
    name = "triton"
    priority = 10            # wins over eager wherever it is available (CUDA, sm_89+, triton installed)

    def available(self, device="cuda") -> bool:
        if torch.device(device).type != "cuda":
            return False
        try:
            tq = _tq()
        except Exception:            # triton missing or broken: the eager backend serves
            return False
        return tq.available(device) and not tq.interpreted()

    def __init__(self):
        self._pending: list = []              # deferred finiteness checks: (amax on the device, name)

    def _checked(self, w, amax, name, check_finite):
        if check_finite == "deferred":        # no host sync now: flush() (or the 64th deferred call) raises
            self._pending.append((amax, name))
            if len(self._pending) >= 64:
                self.flush()
        else:
            _finite_or_raise(w, amax, name)

    def flush(self) -> None:
        """Raise the InputError of the first deferred call whose input held inf/NaN (one host sync for all)."""
        pend, self._pending = self._pending, []
        if not pend:
            return
        ok = torch.isfinite(torch.stack([a.reshape(()) for a, _ in pend])).cpu()
        for good, (_, name) in zip(ok.tolist(), pend):
            if not good:
                raise InputError("tensor has non-finite values (inf/NaN); refusing to quantize", name)

    def quantize_fp8(self, w: torch.Tensor, scale: torch.Tensor | None = None, *, name: str | None = None,
                     check_finite: str = "sync"):
        """``check_finite``: "sync" raises here (one host sync per call: the per-call overhead measured on small
        tensors), "deferred" leaves the check to :meth:`flush` (the raw kernel's speed)."""
        if not _fits(w):                      # other dtypes / huge tensors: the reference math
            return _eager().quantize_fp8(w, scale, name=name)
        q, s, amax = _tq().quantize_fp8_async(w, scale)
        self._checked(w, amax, name, check_finite)
        return q, s

    def quantize_int8_rowwise(self, w: torch.Tensor, *, name: str | None = None, check_finite: str = "sync"):
        """int8 per row (quant.formats.int8's math, the same bytes) -> (q, scale [N, 1]), or None for a tensor the
        kernel does not take (the format then runs its own math)."""
        if not _fits(w) or w.dim() != 2:
            return None
        q, s, amax = _tq().quantize_int8_rows_async(w)
        self._checked(w, amax, name, check_finite)
        return q, s

    def quantize_nvfp4(self, w: torch.Tensor, global_scale: torch.Tensor | None = None, *, name: str | None = None):
        if w.dim() != 2:
            raise ShapeError(f"nvfp4 needs a 2-D weight, got shape {list(w.shape)}", name)
        if not _fits(w):
            return _eager().quantize_nvfp4(w, global_scale, name=name)
        packed, scales, s2, amax = _tq().quantize_nvfp4_async(w, global_scale)
        _finite_or_raise(w, amax, name)
        return packed, scales, s2

    def dequantize_fp8(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if dtype not in _FLOATS or q.device.type != "cuda":
            return _eager().dequantize_fp8(q, scale, dtype)
        return _tq().dequantize_fp8(q, scale, dtype)

    def dequantize_nvfp4(self, packed: torch.Tensor, scales: torch.Tensor, s2: torch.Tensor, n: int, k: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if dtype not in _FLOATS or packed.device.type != "cuda":
            return _eager().dequantize_nvfp4(packed, scales, s2, n, k, dtype)
        if scales.dtype == torch.uint8:
            scales = scales.view(torch.float8_e4m3fn)
        return _tq().dequantize_nvfp4(packed, scales, s2, n, k, dtype)

    def __repr__(self):
        return "<kernel backend triton>"


BACKEND = TritonBackend()
