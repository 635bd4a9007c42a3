"""The ``triton`` kernel backend: the op signatures of the kernel seam, on quant.kernels.triton_quant.

Registered in quant.kernels with a priority above eager: on a CUDA GPU (sm_89+) with triton it is
the default backend; elsewhere (CPU, or the interpreter) it reports itself unavailable. Its ``ops`` say
what it takes -- CUDA tensors of fp32/bf16/fp16 below 2**31 elements (and 2-D where the op needs it);
the registry sends every other call to the next backend (eager). Non-finite input raises the same
InputError as the eager reference, found from the amax the kernels compute anyway. By default the check is
*deferred* (``check_finite="deferred"``): the op never waits for the device, and the error is raised by
:meth:`TritonBackend.flush` -- which the 64th deferred call, every ``check_finite="sync"`` call and every
converter path make -- so a loop of calls runs at the raw kernel's speed (a host sync per call cost 20-39 %
of it on an H100: benchmarks/test_bench_new_formats_gpu.py). ``check_finite="sync"`` raises at the call
(one host sync). The pipelined converter uses the ``*_async`` ops and checks the amax itself.
"""
from __future__ import annotations

import math

import torch

from ..errors import InputError
from .registry import Needs


def _tq():
    """The kernels module (imports triton: only when a CUDA device is asked about or used)."""
    from . import triton_quant
    return triton_quant


def _finite_or_raise(x: torch.Tensor, amax: torch.Tensor, name: str | None = None) -> None:
    if not math.isfinite(amax.item()):            # one 4-byte copy back (no isfinite launch)
        bad = int((~torch.isfinite(x)).sum())
        raise InputError(f"tensor has {bad} non-finite values (inf/NaN); refusing to quantize", name)


_FLOATS = (torch.float32, torch.bfloat16, torch.float16)
_TAKES = Needs(devices=("cuda",), dtypes=_FLOATS, max_numel=2**31)
_TAKES_2D = Needs(devices=("cuda",), dtypes=_FLOATS, max_numel=2**31, dims=2)
_DECODES = Needs(devices=("cuda",), out_dtypes=_FLOATS)


class TritonBackend:
    name = "triton"
    priority = 10            # wins over eager wherever it is available (CUDA, sm_89+, triton installed)
    ops = {"quantize_fp8": _TAKES, "quantize_nvfp4": _TAKES_2D, "dequantize_fp8": _DECODES,
           "dequantize_nvfp4": _DECODES, "quantize_int8_rowwise": _TAKES_2D, "quantize_fp8_async": _TAKES,
           "quantize_nvfp4_async": _TAKES, "quantize_int8_rows_async": _TAKES, "quantize_mxfp8": _TAKES_2D,
           "quantize_mxfp8_async": _TAKES, "quantize_w4a4_convrot": _TAKES_2D, "quantize_int8_convrot": _TAKES_2D,
           "quantize_int8_convrot_async": _TAKES,
           "quantize_w4a4_convrot_async": _TAKES, "quantize_w4a8_rotated": _TAKES_2D}

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
            self.flush()                      # an earlier deferred error is raised first, in call order
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
                     check_finite: str = "deferred"):
        """``check_finite``: "deferred" (default) leaves the check to :meth:`flush` (the raw kernel's speed),
        "sync" raises here (one host sync per call)."""
        q, s, amax = _tq().quantize_fp8_async(w, scale)
        self._checked(w, amax, name, check_finite)
        return q, s

    def quantize_int8_rowwise(self, w: torch.Tensor, *, name: str | None = None, check_finite: str = "deferred"):
        """int8 per row (quant.formats.int8's math, the same bytes) -> (q, scale [N, 1])."""
        q, s, amax = _tq().quantize_int8_rows_async(w)
        self._checked(w, amax, name, check_finite)
        return q, s

    def quantize_mxfp8(self, w: torch.Tensor, *, name: str | None = None, check_finite: str = "deferred"):
        """MXFP8 (quant.formats.mxfp8's math, the same bytes) -> (codes, swizzled E8M0 exponents)."""
        q, s, amax = _tq().quantize_mxfp8_async(w)
        self._checked(w, amax, name, check_finite)
        return q, s

    def quantize_w4a4_convrot(self, w: torch.Tensor, group: int, *, name: str | None = None,
                              check_finite: str = "deferred"):
        """W4A4 ConvRot (quant.formats.w4a4_convrot's math, the same bytes) -> (packed codes, scale [N])."""
        p, s, amax = self.quantize_w4a4_convrot_async(w, group)
        self._checked(w, amax, name, check_finite)
        return p, s

    def quantize_int8_convrot(self, w: torch.Tensor, group: int, *, name: str | None = None,
                              check_finite: str = "deferred"):
        """int8 ConvRot (quant.formats.int8_convrot's math, the same bytes) -> (q, scale [N, 1])."""
        q, s, amax = _tq().quantize_int8_convrot_async(w, group)
        self._checked(w, amax, name, check_finite)
        return q, s

    def quantize_w4a8_rotated(self, r: torch.Tensor, codebook: torch.Tensor, *, name: str | None = None,
                              check_finite: str = "deferred"):
        """W4A8's per-group part on the rotated weight (quant.formats.w4a8_int8's math, the same bytes) ->
        (packed, s_rel, s_channel); None where the device's torch sums 16 values in an order the kernel does not
        know (quant.kernels.triton_w4a8.sum_order) or casts to e4m3 unlike it (e4m3_overflow): then the format's
        torch ops run."""
        from . import triton_w4a8
        got = triton_w4a8.quantize_w4a8_rotated(r, codebook)
        if got is None:
            return None
        p, sr, sc, amax = got
        self._checked(r, amax, name, check_finite)
        return p, sr, sc

    def quantize_nvfp4(self, w: torch.Tensor, global_scale: torch.Tensor | None = None, *, name: str | None = None):
        packed, scales, s2, amax = _tq().quantize_nvfp4_async(w, global_scale)
        _finite_or_raise(w, amax, name)
        return packed, scales, s2

    def dequantize_fp8(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return _tq().dequantize_fp8(q, scale, dtype)

    def dequantize_nvfp4(self, packed: torch.Tensor, scales: torch.Tensor, s2: torch.Tensor, n: int, k: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if scales.dtype == torch.uint8:
            scales = scales.view(torch.float8_e4m3fn)
        return _tq().dequantize_nvfp4(packed, scales, s2, n, k, dtype)

    # the pipelined converter's ops: no host sync; the amax comes back for a later finiteness check
    def quantize_fp8_async(self, x: torch.Tensor, scale: torch.Tensor | None = None):
        return _tq().quantize_fp8_async(x, scale)

    def quantize_nvfp4_async(self, x: torch.Tensor, global_scale: torch.Tensor | None = None):
        return _tq().quantize_nvfp4_async(x, global_scale)

    def quantize_int8_rows_async(self, x: torch.Tensor):
        return _tq().quantize_int8_rows_async(x)

    def quantize_mxfp8_async(self, x: torch.Tensor):
        return _tq().quantize_mxfp8_async(x)

    def quantize_int8_convrot_async(self, x: torch.Tensor, group: int):
        return _tq().quantize_int8_convrot_async(x, group)

    def quantize_w4a4_convrot_async(self, x: torch.Tensor, group: int):
        return _tq().quantize_w4a4_convrot_async(x, group)

    def __repr__(self):
        return "<kernel backend triton>"


BACKEND = TritonBackend()
