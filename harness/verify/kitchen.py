"""comfy-kitchen, the independent reference the numeric check decodes with (never quantgate's own
kernels or a format object's dequantize).

One reference per kernel family (``fmt.kernel``): how kitchen decodes it, which cheap statistics it
has, and which usual mistakes a failed comparison is re-tried against. A format without an entry here
is reported as not numerically checkable instead of being guessed at.
"""
from __future__ import annotations

import contextlib
import math

import torch

from . import row_bounds, stats
from .metrics import fp8_code_metrics, from_sums, metrics


@contextlib.contextmanager
def open_kitchen():
    """comfy-kitchen with its eager (plain torch) backend forced: the reference on any device."""
    try:
        import comfy_kitchen as ck
    except ImportError as e:   # pragma: no cover - the test extra pins it
        from quant.errors import QuantgateError
        raise QuantgateError(f"numeric verification needs comfy-kitchen (pip install comfy-kitchen): {e}") from None
    with ck.use_backend("eager"):
        yield ck


class Fp8Reference:
    """Per-tensor fp8: ``ck.dequantize_per_tensor_fp8``; metrics from a 256-code table (exact, cheap)."""
    kernel = "fp8"
    exact_fast_metrics = False     # the code-table metrics are confirmed on a full dequantization on failure

    def dequantize(self, ck, w, scale, bs, n=None, k=None):
        return ck.dequantize_per_tensor_fp8(w, scale, output_type=torch.float32)

    def precompute(self, w):
        return torch.bincount(w.view(torch.uint8).reshape(-1), minlength=256)

    def stats(self, la, w, scale, bs, f, pre=None):
        stats.fp8_stats(la, w, scale, f, pre)

    def fast_metrics(self, ck, w, scale, bs, ref, n, k, pre):
        return fp8_code_metrics(ck, w, scale, ref, pre)

    def mistakes(self, ck, w, scale, bs, n, k):
        return [("the data is e5m2 but declared e4m3fn", lambda: w.view(torch.float8_e5m2).float() * scale)]

    def metrics_and_rows(self, ck, w, scale, bs, ref, n, k, pre):
        """(rel, cos, alpha) of the whole tensor and the rows beyond the format's per-row worst case."""
        table = ck.dequantize_per_tensor_fp8(torch.arange(256, dtype=torch.uint8, device=w.device)
                                             .view(torch.float8_e4m3fn), scale, output_type=torch.float32)
        tot: list = []
        bad, n_bad, worst = row_bounds.fp8_bad_rows(w.view(torch.uint8), table, float(scale), ref, 8, tot)
        na2, nb2, err2 = tot             # the tensor metrics from the same pass (kitchen's table values)
        if not all(math.isfinite(v) for v in tot):
            return (math.inf, -1.0, math.nan), (bad, n_bad, worst, None)
        return from_sums(na2, nb2, err2), (bad, n_bad, worst, None)


class Nvfp4Reference:
    """NVFP4: ``ck.dequantize_nvfp4`` (swizzled block scales, high-nibble-first packing)."""
    kernel = "nvfp4"
    exact_fast_metrics = True

    def dequantize(self, ck, w, scale, bs, n=None, k=None):
        out = ck.dequantize_nvfp4(w.view(torch.uint8), scale, bs, output_type=torch.float32)
        return out if n is None else out[:n, :k]

    def precompute(self, w):
        return None

    def stats(self, la, w, scale, bs, f, pre=None):
        stats.nvfp4_stats(la, w, scale, bs, f)

    def fast_metrics(self, ck, w, scale, bs, ref, n, k, pre):
        return metrics(ref.to(torch.float32), self.dequantize(ck, w, scale, bs, n, k))

    def mistakes(self, ck, w, scale, bs, n, k):
        tries = [("the nibbles are swapped (ComfyUI puts the even element in the HIGH nibble)",
                  lambda: ck.dequantize_nvfp4(ck.swap_nibbles(w), scale, bs, output_type=torch.float32)[:n, :k])]
        np_, c = w.shape[0], w.shape[1] * 2 // 16
        if bs.numel() == np_ * c or (bs.shape[0] >= np_ and bs.shape[1] >= c):
            def rowmajor():
                flat = bs.reshape(-1)[: np_ * c].reshape(np_, c)
                sw = ck.to_blocked(flat.view(torch.uint8), flatten=False).view(torch.float8_e4m3fn).reshape(bs.shape)
                return ck.dequantize_nvfp4(w, scale, sw, output_type=torch.float32)[:n, :k]
            tries.append(("the block scales are stored row-major, not in the cuBLAS swizzled layout", rowmajor))
        return tries

    def metrics_and_rows(self, ck, w, scale, bs, ref, n, k, pre):
        """One kitchen dequantization for both the tensor metrics and the per-16-block bound."""
        from quant.kernels.nvfp4 import unswizzle
        got = self.dequantize(ck, w, scale, bs, n, k)
        ref32 = ref.to(torch.float32)
        m = metrics(ref32, got)
        np_, c = w.shape[0], w.shape[1] * 2 // 16
        logical = unswizzle(bs.view(torch.uint8), np_, c).view(torch.float8_e4m3fn)
        bad, n_bad, n_blocks, worst = row_bounds.nvfp4_bad_blocks(got, ref32, logical, float(scale), 8)
        return m, (bad, n_bad, worst, n_blocks)


REFERENCES = {r.kernel: r for r in (Fp8Reference(), Nvfp4Reference())}


def reference_for(fmt):
    """The kitchen reference of a format object (None: kitchen cannot decode it here)."""
    return None if fmt is None else REFERENCES.get(fmt.kernel)
