"""Data-level checks, streamed one layer at a time (peak memory: a few tensors).

* With a source: every quantized layer is dequantized by **comfy-kitchen's eager dequantizers**
  (independent of quantgate's own kernels) and compared with the source weight (relative error and
  cosine, thresholds from ``quant.spec``); failures are diagnosed by re-trying the usual mistakes
  (swapped nibbles, row-major block scales, e5m2 data, a scale off by a factor). Unquantized tensors
  must equal the source after dtype conversion; every source tensor must be present.
* Without a source: statistical plausibility only (NaN codes, use of the fp8 range, decoded
  magnitudes, block scales lining up with the data), and the report says so.
"""
from __future__ import annotations

import contextlib
import math

import torch

from quant import spec as S

from .findings import Findings
from .model import IGNORED_KEYS, Structure

MAX_WEIGHT_AMAX = 200.0      # decoded |W| above this is not a trained Linear weight (unit/inverted scale)
RANGE_FRACTION = 1 / 16      # fp8 data whose max code is below 448/16 wastes >4 bits of range
MISALIGNED_FRACTION = 0.01   # nvfp4 blocks whose scale and codes disagree (zero vs non-zero)


@contextlib.contextmanager
def _kitchen():
    try:
        import comfy_kitchen as ck
    except ImportError as e:   # pragma: no cover - the test extra pins it
        from quant.errors import QuantgateError
        raise QuantgateError(f"numeric verification needs comfy-kitchen (pip install comfy-kitchen): {e}") from None
    with ck.use_backend("eager"):
        yield ck


def _e4m3_max_code_value(codes_u8: torch.Tensor) -> float:
    mag = codes_u8 & 0x7F
    mag = torch.where(mag == 0x7F, torch.zeros_like(mag), mag)
    top = int(mag.max()) if mag.numel() else 0
    return float(torch.tensor([top], dtype=torch.uint8).view(torch.float8_e4m3fn).float())


def _nan_count(codes_u8: torch.Tensor) -> int:
    return int(((codes_u8 & 0x7F) == 0x7F).sum())


def _scale_key(la) -> str:
    return "weight_scale_2" if la.spec is S.NVFP4 else ("scale_weight" if la.legacy else "weight_scale")


def _checkable(st: Structure, la) -> bool:
    spec = la.spec
    if spec is None or la.logical_shape is not None and len(la.logical_shape) != 2:
        return False
    for c in spec.companions:
        k = la.keys.get(c.suffix)
        if c.required and k is None:
            return False
        if k is not None and st.infos[k].dtype not in c.dtypes:
            return False
    w = st.infos[la.keys["weight"]]
    if len(w.shape) != 2:
        return False
    if spec is S.NVFP4:
        bs = st.infos[la.keys["weight_scale"]].shape
        np_, kp = w.shape[0], w.shape[1] * 2
        if len(bs) != 2 or bs[0] % 128 or bs[1] % 4 or bs[0] < np_ or bs[1] * 16 < kp:
            return False
    s = st.infos[la.keys[_scale_key(la)]]
    return math.prod(s.shape) == 1


def _load(st: Structure, la):
    w = st.src.get(la.keys["weight"])
    scale = st.src.get(la.keys[_scale_key(la)]).float().reshape(())
    bs = None
    if la.spec is S.NVFP4:
        bs = st.src.get(la.keys["weight_scale"])
        if bs.dtype == torch.uint8:
            bs = bs.view(torch.float8_e4m3fn)
    return w, scale, bs


# ---- statistics (no source) ---------------------------------------------------------------------
def statistics(st: Structure, f: Findings, progress=None) -> int:
    nbytes = 0
    for la in st.declared:
        if not _checkable(st, la):
            continue
        w, scale, bs = _load(st, la)
        nbytes += w.numel() * w.element_size()
        if la.spec is S.NVFP4:
            _nvfp4_stats(la, w, scale, bs, f)
        else:
            _fp8_stats(la, w, scale, f)
        if progress:
            progress(nbytes)
        del w, bs
    return nbytes


def _fp8_stats(la, w, scale, f: Findings):
    codes = w.view(torch.uint8)
    if _nan_count(codes):
        f.error("stats.nonfinite", "fp8 weight holds NaN codes (0x7F/0xFF): not e4m3fn data (e5m2 or garbage?)",
                [la.name])
    top = _e4m3_max_code_value(codes)
    amax = top * float(scale)
    if amax > MAX_WEIGHT_AMAX:
        f.error("scale.magnitude", f"dequantized weights reach |W| > {MAX_WEIGHT_AMAX:g}: the scale is not the decode "
                                   "multiplier amax/448 (unit or inverted scale?)", [la.name])
    elif 0 < top < 448 * RANGE_FRACTION:
        f.warning("stats.range", "fp8 weight uses less than 1/16 of the e4m3 range: its scale is too large "
                                 "(precision is wasted)", [la.name])
    elif top == 0:
        f.warning("stats.range", "fp8 weight is all zeros", [la.name])


def _nvfp4_stats(la, w, s2, bs, f: Findings):
    b = bs.view(torch.uint8)
    if _nan_count(b):
        f.error("stats.nonfinite", "nvfp4 block scales hold NaN codes", [la.name])
    if bool(((b & 0x80) != 0).logical_and((b & 0x7F) != 0).any()):
        f.error("scale.value", "nvfp4 block scales hold negative values", [la.name])
    amax = 6.0 * _e4m3_max_code_value(b) * float(s2)
    if amax > MAX_WEIGHT_AMAX:
        f.error("scale.magnitude", f"dequantized weights reach |W| > {MAX_WEIGHT_AMAX:g}: weight_scale_2 is not the "
                                   "decode multiplier amax/2688 (unit or inverted scale?)", [la.name])
    np_, kp = w.shape[0], w.shape[1] * 2
    c = kp // 16
    from quant import nvfp4 as nv
    logical = nv.unswizzle(b, np_, c)                    # layout only; numbers are proven with --source
    nonzero_codes = ((w & 0x77) != 0).reshape(np_, c, 8).any(-1)
    has_scale = (logical & 0x7F) != 0
    bad = int((nonzero_codes != has_scale).sum())
    if bad > MISALIGNED_FRACTION * max(1, np_ * c):
        f.error("stats.range", "nvfp4 block scales do not line up with the data (zero scales on non-zero blocks): "
                               "block scales not in the swizzled layout?", [la.name])


# ---- comparison with a source -------------------------------------------------------------------
def _metrics(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float, float]:
    a = ref.reshape(-1)
    b = got.reshape(-1)
    na = float(torch.linalg.vector_norm(a))
    nb = float(torch.linalg.vector_norm(b))
    dot = float(torch.dot(a, b))
    nd = float(torch.linalg.vector_norm(a - b))
    if not all(math.isfinite(x) for x in (na, nb, dot, nd)):
        return math.inf, -1.0, math.nan
    rel = nd / na if na > 0 else (0.0 if nb == 0 else math.inf)
    cos = dot / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    alpha = dot / (nb * nb) if nb > 0 else math.nan       # best factor got -> ref
    return rel, cos, alpha


def _ok(spec, rel, cos) -> bool:
    return rel <= spec.max_rel_error and cos >= spec.min_cosine


def _dequant(ck, la, w, scale, bs, n, k):
    if la.spec is S.NVFP4:
        return ck.dequantize_nvfp4(w, scale, bs, output_type=torch.float32)[:n, :k]
    return ck.dequantize_per_tensor_fp8(w, scale, output_type=torch.float32)


def _diagnose(ck, la, w, scale, bs, n, k, ref, alpha, cos) -> str:
    spec = la.spec
    if cos >= spec.min_cosine and math.isfinite(alpha) and alpha > 0:
        if abs(math.log(alpha)) > math.log(1.5):
            extra = " (inverted scale?)" if alpha > 1e3 or alpha < 1e-3 else ""
            return (f"values are right up to a factor ~{alpha:.3g}: the scale is wrong{extra}")
    if spec is S.NVFP4:
        tries = [("the nibbles are swapped (ComfyUI puts the even element in the HIGH nibble)",
                  lambda: ck.dequantize_nvfp4(ck.swap_nibbles(w), scale, bs, output_type=torch.float32)[:n, :k])]
        np_, c = w.shape[0], w.shape[1] * 2 // 16
        if bs.numel() == np_ * c or (bs.shape[0] >= np_ and bs.shape[1] >= c):
            def rowmajor():
                flat = bs.reshape(-1)[: np_ * c].reshape(np_, c)
                sw = ck.to_blocked(flat.view(torch.uint8), flatten=False).view(torch.float8_e4m3fn).reshape(bs.shape)
                return ck.dequantize_nvfp4(w, scale, sw, output_type=torch.float32)[:n, :k]
            tries.append(("the block scales are stored row-major, not in the cuBLAS swizzled layout", rowmajor))
    else:
        tries = [("the data is e5m2 but declared e4m3fn",
                  lambda: w.view(torch.float8_e5m2).float() * scale)]
    for why, fn in tries:
        try:
            r, cs, _ = _metrics(ref, fn())
        except Exception:       # a diagnosis attempt must never break the report
            continue
        if _ok(spec, r, cs):
            return why
    return "the dequantized weight does not match the source"


def compare(st: Structure, source, f: Findings, progress=None) -> int:
    """Compare every tensor with ``source`` (a quant.sources.Source). Returns checkpoint bytes read."""
    nbytes = 0
    declared = {la.name: la for la in st.declared}
    comp = st.companion_keys()
    src_keys = set(source.keys())
    with _kitchen() as ck:
        for la in declared.values():
            key = la.name + ".weight"
            if key not in src_keys or la.spec is None:
                continue
            sinfo = source.info(key)
            if len(sinfo.shape) != 2 or not _checkable(st, la):
                continue
            n, k = sinfo.shape
            w, scale, bs = _load(st, la)
            expect_w = S.resolve_shape(la.spec.companion("weight").shape, n, k)
            if tuple(w.shape) != expect_w:
                f.error("numeric.shape", "quantized weight shape does not fit the source weight's shape", [la.name])
                continue
            nbytes += w.numel() * w.element_size()
            if la.spec is S.NVFP4:       # the statistics cost no extra I/O here
                _nvfp4_stats(la, w, scale, bs, f)
            else:
                _fp8_stats(la, w, scale, f)
            ref = source.get(key).to(torch.float32)
            got = _dequant(ck, la, w, scale, bs, n, k)
            rel, cos, alpha = _metrics(ref, got)
            if not _ok(la.spec, rel, cos):
                why = _diagnose(ck, la, w, scale, bs, n, k, ref, alpha, cos)
                f.error("numeric.mismatch", f"comfy-kitchen's dequantization differs from the source "
                                            f"(limits: rel. error <= {la.spec.max_rel_error}, cosine >= "
                                            f"{la.spec.min_cosine}): {why}", [la.name])
            if progress:
                progress(nbytes)
            del w, bs, ref, got
        # unquantized tensors: equal to the source after dtype conversion
        for name, info in st.infos.items():
            if name in comp or name.endswith(".comfy_quant") or name in IGNORED_KEYS or \
                    any(m.key == name for m in st.markers):
                continue
            if name not in src_keys:
                f.warning("numeric.extra-tensor", "tensor is not in the source", [name])
                continue
            sinfo = source.info(name)
            if tuple(sinfo.shape) != tuple(info.shape):
                f.error("numeric.shape", "unquantized tensor's shape differs from the source", [name])
                continue
            got = st.src.get(name)
            nbytes += got.numel() * got.element_size()
            ref = source.get(name)
            if not _equal_after_cast(ref, got):
                la = declared.get(name.rsplit(".", 1)[0])
                if la is not None and name.endswith(".bias") and la.spec is not None:
                    rel, cos, _ = _metrics(ref.float(), got.float())
                    if _ok(la.spec, rel, cos):
                        f.info("numeric.bias-corrected", "bias of a quantized layer differs slightly from the source "
                                                         "(bias correction by the converter); within the format's "
                                                         "error limits", [name])
                        continue
                f.error("numeric.unquantized-mismatch", "unquantized tensor differs from the source beyond dtype "
                                                        "conversion", [name])
            if progress:
                progress(nbytes)
            del got, ref
    for name in sorted(src_keys):
        if name in st.infos:
            continue
        if name.endswith(".weight") and name[:-7] in declared:
            continue
        f.error("numeric.source-missing", "source tensor is missing from the checkpoint", [name])
    return nbytes


def _equal_after_cast(ref: torch.Tensor, got: torch.Tensor) -> bool:
    try:
        cast = ref.to(got.dtype)
    except (RuntimeError, TypeError):
        return False
    if got.dtype.is_floating_point:
        a, b = cast.float(), got.float()
        return bool(torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))
                    and torch.equal(torch.isnan(a), torch.isnan(b)))
    return bool(torch.equal(cast, got))
