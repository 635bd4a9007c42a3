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
import os
from concurrent.futures import ThreadPoolExecutor

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


def _code_stats(codes_u8: torch.Tensor, counts: torch.Tensor | None = None) -> tuple[bool, float]:
    """(holds NaN codes, largest finite |value|) of e4m3 bytes, from a 256-bin histogram."""
    if not codes_u8.numel():
        return False, 0.0
    if counts is None:
        counts = torch.bincount(codes_u8.reshape(-1), minlength=256)
    mag = counts[:128] + counts[128:]
    nan = bool(mag[0x7F] > 0)
    nz = torch.nonzero(mag[:0x7F]).reshape(-1)
    top = int(nz[-1]) if nz.numel() else 0
    return nan, float(torch.tensor([top], dtype=torch.uint8).view(torch.float8_e4m3fn).float())


def scale_key(la) -> str:
    """The per-tensor decode scale's suffix of a declared layer."""
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
    s = st.infos[la.keys[scale_key(la)]]
    return math.prod(s.shape) == 1


def load_layer(st: Structure, la):
    """(weight, per-tensor scale as float32 0-d, nvfp4 block scales viewed as e4m3 or None)."""
    w = st.src.get(la.keys["weight"])
    scale = st.src.get(la.keys[scale_key(la)]).float().reshape(())
    bs = None
    if la.spec is S.NVFP4:
        bs = st.src.get(la.keys["weight_scale"])
        if bs.dtype == torch.uint8:
            bs = bs.view(torch.float8_e4m3fn)
    return w, scale, bs


# ---- statistics (no source) ---------------------------------------------------------------------
def statistics(st: Structure, f: Findings, progress=None) -> int:
    nbytes = 0
    comp = st.companion_keys()
    for name, info in st.infos.items():       # unquantized float tensors must be finite (comfy_format §7.9)
        if name in comp or info.dtype not in S.FLOAT_DTYPES:
            continue
        t = st.src.get(name)
        nbytes += t.numel() * t.element_size()
        if t.numel() and not bool(torch.isfinite(t).all()):
            f.error("stats.nonfinite", "unquantized tensor holds NaN/Inf values", [name])
        del t
    for la in st.declared:
        if not _checkable(st, la):
            continue
        w, scale, bs = load_layer(st, la)
        nbytes += w.numel() * w.element_size()
        if la.spec is S.NVFP4:
            _nvfp4_stats(la, w, scale, bs, f)
        else:
            _fp8_stats(la, w, scale, f)
        if progress:
            progress(nbytes)
        del w, bs
    return nbytes


def _fp8_stats(la, w, scale, f: Findings, counts=None):
    nan, top = _code_stats(w.view(torch.uint8), counts)
    if nan:
        f.error("stats.nonfinite", "fp8 weight holds NaN codes (0x7F/0xFF): not e4m3fn data (e5m2 or garbage?)",
                [la.name])
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
    nan, top = _code_stats(b)
    if nan:
        f.error("stats.nonfinite", "nvfp4 block scales hold NaN codes", [la.name])
    if int(b.max()) > 0x80:
        f.error("scale.value", "nvfp4 block scales hold negative values", [la.name])
    amax = 6.0 * top * float(s2)
    if amax > MAX_WEIGHT_AMAX:
        f.error("scale.magnitude", f"dequantized weights reach |W| > {MAX_WEIGHT_AMAX:g}: weight_scale_2 is not the "
                                   "decode multiplier amax/2688 (unit or inverted scale?)", [la.name])
    np_, kp = w.shape[0], w.shape[1] * 2
    c = kp // 16
    from quant import nvfp4 as nv
    logical = nv.unswizzle(b, np_, c)                    # layout only; numbers are proven with --source
    if w.is_contiguous() and w.shape[1] % 8 == 0:   # one 16-code block = 8 bytes = one int64
        nonzero_codes = (w.view(torch.int64) & 0x7777777777777777) != 0
    else:
        nonzero_codes = ((w & 0x77) != 0).reshape(np_, c, 8).any(-1)
    has_scale = (logical & 0x7F) != 0
    bad = int((nonzero_codes != has_scale).sum())
    if bad > MISALIGNED_FRACTION * max(1, np_ * c):
        f.error("stats.range", "nvfp4 block scales do not line up with the data (zero scales on non-zero blocks): "
                               "block scales not in the swizzled layout?", [la.name])


# ---- comparison with a source -------------------------------------------------------------------
def _metrics(ref: torch.Tensor, got: torch.Tensor) -> tuple[float, float, float]:
    """(relative L2 error, cosine, best factor got->ref) from three dot products (no temporaries)."""
    a = ref.reshape(-1)
    b = got.reshape(-1)
    na2, nb2, dot = float(torch.dot(a, a)), float(torch.dot(b, b)), float(torch.dot(a, b))
    if not all(math.isfinite(x) for x in (na2, nb2, dot)):
        return math.inf, -1.0, math.nan
    na, nb = math.sqrt(na2), math.sqrt(nb2)
    nd = math.sqrt(max(na2 + nb2 - 2 * dot, 0.0))
    rel = nd / na if na > 0 else (0.0 if nb == 0 else math.inf)
    cos = dot / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    alpha = dot / nb2 if nb2 > 0 else math.nan       # best factor got -> ref
    return rel, cos, alpha


def _fp8_metrics(ck, w, scale, ref_bf: torch.Tensor, counts=None) -> tuple[float, float, float]:
    """Per-tensor fp8 dequantization is elementwise: x_hat = D(code) with D = comfy-kitchen's
    ``dequantize_per_tensor_fp8`` at this layer's scale. So D is evaluated (by kitchen) on all 256
    codes, and the metrics use per-code sums of the source: dot = sum_c D(c) * sum_{i:code_i=c} x_i,
    |x_hat|^2 = sum_c D(c)^2 * count_c -- the same numbers as dequantizing every element, in a
    fraction of the time."""
    table = ck.dequantize_per_tensor_fp8(torch.arange(256, dtype=torch.uint8, device=w.device).view(torch.float8_e4m3fn),
                                         scale, output_type=torch.float32).double()
    codes = w.view(torch.uint8).reshape(-1)
    x = ref_bf.reshape(-1).float()
    counts = (torch.bincount(codes, minlength=256) if counts is None else counts).double()
    sums = torch.bincount(codes, weights=x, minlength=256).double()
    used = counts > 0
    if not bool(torch.isfinite(table[used]).all()):
        return math.inf, -1.0, math.nan
    na2 = float(torch.dot(x, x))
    nb2 = float((table[used] ** 2 * counts[used]).sum())
    dot = float((table[used] * sums[used]).sum())
    na, nb = math.sqrt(na2), math.sqrt(nb2)
    nd = math.sqrt(max(na2 + nb2 - 2 * dot, 0.0))
    rel = nd / na if na > 0 else (0.0 if nb == 0 else math.inf)
    cos = dot / (na * nb) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
    alpha = dot / nb2 if nb2 > 0 else math.nan
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


class _Local:
    """Findings of one task, merged into the report in task order (workers never share state)."""

    def __init__(self):
        self.items = []

    def error(self, *a):
        self.items.append(("error", *a))

    def warning(self, *a):
        self.items.append(("warning", *a))

    def info(self, *a):
        self.items.append(("info", *a))


def _check_layer(ck, st, source, la, f, device="cpu") -> int:
    key = la.name + ".weight"
    n, k = source.info(key).shape
    w, scale, bs = load_layer(st, la)
    if device != "cpu":          # kitchen's eager reference is plain torch: it runs on the GPU as is
        w, scale = w.to(device), scale.to(device)
        bs = None if bs is None else bs.to(device)
    expect_w = S.resolve_shape(la.spec.companion("weight").shape, n, k)
    if tuple(w.shape) != expect_w:
        f.error("numeric.shape", "quantized weight shape does not fit the source weight's shape", [la.name])
        return 0
    nbytes = w.numel() * w.element_size()
    counts = None
    if la.spec is S.NVFP4:       # the statistics cost no extra I/O here
        _nvfp4_stats(la, w, scale, bs, f)
    else:
        counts = torch.bincount(w.view(torch.uint8).reshape(-1), minlength=256)
        _fp8_stats(la, w, scale, f, counts)
    ref = source.get(key)
    if device != "cpu":
        ref = ref.to(device)
    if la.spec is S.NVFP4:
        ref = ref.to(torch.float32)
        rel, cos, alpha = _metrics(ref, _dequant(ck, la, w, scale, bs, n, k))
    else:
        rel, cos, alpha = _fp8_metrics(ck, w, scale, ref, counts)
    if not _ok(la.spec, rel, cos):
        ref = ref.to(torch.float32)
        if la.spec is not S.NVFP4:   # confirm on the full kitchen dequantization
            rel, cos, alpha = _metrics(ref, _dequant(ck, la, w, scale, bs, n, k))
        why = _diagnose(ck, la, w, scale, bs, n, k, ref, alpha, cos)
        f.error("numeric.mismatch", f"comfy-kitchen's dequantization differs from the source "
                                    f"(limits: rel. error <= {la.spec.max_rel_error}, cosine >= "
                                    f"{la.spec.min_cosine}): {why}", [la.name])
    return nbytes


def _check_plain(st, source, name, la, f) -> int:
    got = st.src.get(name)
    if got.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) and got.numel() \
            and not bool(torch.isfinite(got).all()):
        f.error("stats.nonfinite", "unquantized tensor holds NaN/Inf values", [name])
    ref = source.get(name)
    if not _equal_after_cast(ref, got):
        if la is not None and name.endswith(".bias") and la.spec is not None and got.shape == ref.shape:
            # Bias correction moves the bias by (W - W_q) E[x]: judge the shift against the layer's
            # output scale for unit inputs (rms row norm of W), not against the (often tiny) bias.
            wname = la.name + ".weight"
            shift = float((got.float() - ref.float()).pow(2).mean().sqrt())
            out_scale = float(source.get(wname).float().norm(dim=-1).pow(2).mean().sqrt()) \
                if wname in source and source.info(wname).shape[:1] == tuple(ref.shape) else 0.0
            if math.isfinite(shift) and shift <= la.spec.max_rel_error * out_scale:
                f.info("numeric.bias-corrected", "bias of a quantized layer differs slightly from the source "
                                                 "(bias correction by the converter); within the format's "
                                                 "error limits", [name])
                return got.numel() * got.element_size()
        f.error("numeric.unquantized-mismatch", "unquantized tensor differs from the source beyond dtype "
                                                "conversion", [name])
    return got.numel() * got.element_size()


WORKERS = max(1, min(2, os.cpu_count() or 1))


def compare(st: Structure, source, f: Findings, progress=None, workers: int | None = None,
            device: str = "cpu") -> int:
    """Compare every tensor with ``source`` (a quant.sources.Source). Returns checkpoint bytes read.
    Tasks (one layer or tensor each) run on ``workers`` threads -- torch releases the GIL, so reading
    one layer overlaps computing another; at most ``workers`` layers are in memory."""
    declared = {la.name: la for la in st.declared}
    comp = st.companion_keys()
    src_keys = set(source.keys())
    markers = {m.key for m in st.markers}
    tasks = []
    for la in declared.values():
        key = la.name + ".weight"
        if key in src_keys and la.spec is not None and len(source.info(key).shape) == 2 and _checkable(st, la):
            tasks.append(("layer", la))
    for name, info in st.infos.items():
        if name in comp or name.endswith(".comfy_quant") or name in IGNORED_KEYS or name in markers:
            continue
        if name not in src_keys:
            f.warning("numeric.extra-tensor", "tensor is not in the source", [name])
        elif tuple(source.info(name).shape) != tuple(info.shape):
            f.error("numeric.shape", "unquantized tensor's shape differs from the source", [name])
        else:
            tasks.append(("plain", name))
    nbytes = 0
    with _kitchen() as ck:
        def run(task):
            loc = _Local()
            kind, x = task
            if kind == "layer":
                nb = _check_layer(ck, st, source, x, loc, device)
            else:
                nb = _check_plain(st, source, x, declared.get(x.rsplit(".", 1)[0]), loc)
            return loc, nb

        n_workers = workers or WORKERS
        if n_workers > 1 and len(tasks) > 1:
            with ThreadPoolExecutor(n_workers) as ex:
                # submit lazily: at most 2 * workers tasks in flight (bounded memory)
                results = _bounded_map(ex, run, tasks, 2 * n_workers)
                for loc, nb in results:
                    nbytes += nb
                    for sev, rule, msg, layers in loc.items:
                        f.add(sev, rule, msg, layers)
                    if progress:
                        progress(nbytes)
        else:
            for t in tasks:
                loc, nb = run(t)
                nbytes += nb
                for sev, rule, msg, layers in loc.items:
                    f.add(sev, rule, msg, layers)
                if progress:
                    progress(nbytes)
    for name in sorted(src_keys):
        if name in st.infos:
            continue
        if name.endswith(".weight") and name[:-7] in declared:
            continue
        f.error("numeric.source-missing", "source tensor is missing from the checkpoint", [name])
    return nbytes


def _bounded_map(ex, fn, items, window):
    from collections import deque
    q = deque()
    it = iter(items)
    for x in it:
        q.append(ex.submit(fn, x))
        if len(q) >= window:
            break
    while q:
        yield q.popleft().result()
        for x in it:
            q.append(ex.submit(fn, x))
            break


def _equal_after_cast(ref: torch.Tensor, got: torch.Tensor) -> bool:
    """Bit-identical after casting the source to the stored dtype (the cast is deterministic)."""
    try:
        cast = ref if ref.dtype == got.dtype else ref.to(got.dtype)
    except (RuntimeError, TypeError):
        return False
    if cast.shape != got.shape:
        return False
    return bool(torch.equal(cast.contiguous().reshape(-1).view(torch.uint8),
                            got.contiguous().reshape(-1).view(torch.uint8)))
