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


class _LayerReference:
    """A reference for formats whose layer is more than (weight, one scale, block scales): it loads every companion
    tensor, decodes through comfy-kitchen's own layout class / dequantize function (eager backend), and judges
    each output row against the format object's per-element worst case (``fmt.elem_bound``) -- the format owns
    its bound, kitchen owns the decode. ``tensors_api``: numeric.py calls :meth:`check`."""
    tensors_api = True
    exact_fast_metrics = True
    kernel = ""

    def load(self, st, la) -> dict:
        import torch
        t = {}
        for c in la.spec.companions:
            k = la.keys.get(c.suffix)
            if k is not None:
                t[c.suffix] = st.src.get(k)
        for suf, v in list(t.items()):
            if suf != "weight" and v.dtype == torch.uint8 and "F8_E4M3" in la.spec.companion(suf).dtypes:
                t[suf] = v.view(torch.float8_e4m3fn)
        return t

    def checkable(self, st, la) -> bool:
        return True

    def decode(self, ck, t, n, k, conf):
        raise NotImplementedError

    def mistakes(self, ck, t, n, k, conf) -> list:
        return []

    def check(self, ck, fmt, t, ref, n, k, conf):
        """((rel, cos, alpha), (first bad rows, number of bad rows, worst, number of bad blocks or None))."""
        ref32 = ref.to(torch.float32)
        got = self.decode(ck, t, n, k, conf)
        m = metrics(ref32, got)
        bound = fmt.elem_bound(t, ref32, conf)
        block = getattr(fmt, "block_size", None)
        return m, row_bounds.bound_rows(got, ref32, bound, 8, block)


def _int8_params(ck, t, n, k, conf, group):
    from comfy_kitchen.tensor.int8 import TensorWiseINT8Layout
    s = t["weight_scale"].to(torch.float32)
    extra = {"convrot": True, "convrot_groupsize": int(group)} if group else {}
    return TensorWiseINT8Layout, TensorWiseINT8Layout.Params(scale=s, orig_dtype=torch.float32, orig_shape=(n, k),
                                                             **extra)


class Int8Reference(_LayerReference):
    """int8_tensorwise (plain or ConvRot): ``TensorWiseINT8Layout.dequantize``, the call ComfyUI's loader makes."""
    kernel = "int8"

    def decode(self, ck, t, n, k, conf, group="declared"):
        from quant.formats.int8 import convrot_group, _convrot_flag
        if group == "declared":
            group = convrot_group(conf) if _convrot_flag(conf) else None
        layout, params = _int8_params(ck, t, n, k, conf, group)
        return layout.dequantize(t["weight"], params).to(torch.float32)

    def mistakes(self, ck, t, n, k, conf):
        from quant.formats import convrot
        from quant.formats.int8 import _convrot_flag, convrot_group
        if _convrot_flag(conf):
            g0 = convrot_group(conf)
            tries = [("the weight is not ConvRot-rotated but the layer declares convrot (plain per-row int8)",
                      lambda: self.decode(ck, t, n, k, conf, None))]
            tries += [(f"the weight was rotated with group size {g}, not the declared convrot_groupsize {g0}",
                       lambda g=g: self.decode(ck, t, n, k, conf, g)) for g in (256, 64, 16, 4) if g != g0 and k % g == 0]
        else:
            tries = [(f"the weight is ConvRot-rotated (group {g}) but the layer does not declare convrot",
                      lambda g=g: self.decode(ck, t, n, k, conf, g)) for g in (256, 64, 16) if k % g == 0]
        return tries


class Int8ConvrotReference(Int8Reference):
    kernel = "int8_convrot"


class Int8FastReference(Int8Reference):
    """comfy-quants' INT8-Fast dialect: the same numbers as int8 / int8-convrot (kitchen decodes them)."""
    kernel = "int8_fast"


class Mxfp8Reference(_LayerReference):
    """MXFP8: ``ck.dequantize_mxfp8`` on the padded codes and the swizzled E8M0 exponents."""
    kernel = "mxfp8"

    def decode(self, ck, t, n, k, conf, scales=None):
        bs = (t["weight_scale"] if scales is None else scales).view(torch.uint8).view(torch.float8_e8m0fnu)
        return ck.dequantize_mxfp8(t["weight"], bs, torch.float32)[:n, :k]

    def mistakes(self, ck, t, n, k, conf):
        bs = t["weight_scale"].view(torch.uint8)
        tries = [(f"the E8M0 block exponents are off by {d:+d} (every block scale x{2.0 ** d:g})",
                  lambda d=d: self.decode(ck, t, n, k, conf, (bs.to(torch.int16) - d).clamp(0, 255).to(torch.uint8)))
                 for d in (1, -1)]
        q = t["weight"]
        r, c = q.shape[0], q.shape[1] // 32
        if bs.numel() >= r * c:
            def rowmajor():
                flat = bs.reshape(-1)[: r * c].reshape(r, c)
                return self.decode(ck, t, n, k, conf, ck.to_blocked(flat, flatten=False).reshape(bs.shape))
            tries.append(("the block exponents are stored row-major, not in the cuBLAS swizzled layout", rowmajor))
        return tries


class W4a4Reference(_LayerReference):
    """convrot_w4a4: kitchen's ``dequantize_convrot_w4a4_weight`` (unpack, per-row scale, rotate back)."""
    kernel = "w4a4"

    def decode(self, ck, t, n, k, conf, packed=None, group=None):
        from comfy_kitchen.tensor import dequantize_convrot_w4a4_weight
        from quant.formats.int8 import convrot_group
        return dequantize_convrot_w4a4_weight(t["weight"] if packed is None else packed, t["weight_scale"],
                                              int(group or convrot_group(conf)), 64, torch.float32)

    def mistakes(self, ck, t, n, k, conf):
        w = t["weight"].view(torch.uint8)
        swapped = ((w >> 4) | (w << 4)).view(torch.int8)
        offset = (w ^ 0x88).view(torch.int8)
        from quant.formats.int8 import convrot_group
        g0 = convrot_group(conf)
        return [("the int4 nibbles are swapped (kitchen puts the EVEN column in the LOW nibble)",
                 lambda: self.decode(ck, t, n, k, conf, swapped)),
                ("the int4 codes are offset-binary (+8), not two's complement: the signs are flipped",
                 lambda: self.decode(ck, t, n, k, conf, offset))] + \
            [(f"the weight was rotated with group size {g}, not the declared convrot_groupsize {g0}",
              lambda g=g: self.decode(ck, t, n, k, conf, None, g)) for g in (256, 64) if g != g0 and k % g == 0]


class W4a8Reference(_LayerReference):
    """asym_w4a8_int8: kitchen's ``dequantize_w4a8_int8_weight`` (codebook levels on the int8 grid, rotate back)."""
    kernel = "w4a8"

    def decode(self, ck, t, n, k, conf, packed=None, group_size=None, group=None):
        from comfy_kitchen.tensor import dequantize_w4a8_int8_weight
        from quant.formats.int8 import convrot_group
        p = conf.get("params") if isinstance(conf.get("params"), dict) else {}
        gs = group_size or int(conf.get("group_size", p.get("group_size", 16)))
        return dequantize_w4a8_int8_weight(t["weight"] if packed is None else packed, t["weight_s_rel"],
                                           t["weight_s_channel"].to(torch.float32), t.get("weight_codebook"),
                                           t.get("weight_correction"), gs, int(group or convrot_group(conf)),
                                           torch.float32)

    def mistakes(self, ck, t, n, k, conf):
        w = t["weight"].view(torch.uint8)
        swapped = ((w >> 4) | (w << 4)).view(torch.int8)
        return [("the 4-bit indices' nibbles are swapped (kitchen puts the EVEN column in the LOW nibble)",
                 lambda: self.decode(ck, t, n, k, conf, swapped))]


REFERENCES = {r.kernel: r for r in (Fp8Reference(), Nvfp4Reference(), Int8Reference(), Int8ConvrotReference(),
                                    Int8FastReference(), Mxfp8Reference(), W4a4Reference(), W4a8Reference())}


def reference_for(fmt):
    """The kitchen reference of a format object (None: kitchen cannot decode it here)."""
    return None if fmt is None else REFERENCES.get(fmt.kernel)
