"""Data-level checks against a source, streamed one layer at a time (peak memory: a few tensors).

Every quantized layer is dequantized by **comfy-kitchen's eager dequantizers** (``kitchen``:
independent of quantgate's own kernels) and compared with the source weight (``metrics``: relative
error and cosine, limits from the layer's format object); failures are diagnosed (``diagnosis``) by
re-trying the usual mistakes (swapped nibbles, row-major block scales, e5m2 data, a scale off by a
factor). Unquantized tensors must equal the source after dtype conversion; every source tensor must be
present. Tasks run on a small thread pool (``pool``). Without a source: ``statistics`` (plausibility only).
"""
from __future__ import annotations

import math

import torch

from quant.checkpoint import IGNORED_KEYS, Structure, load_layer
from quant.dtypes import FLOAT_DTYPES
from quant.formats import resolve_shape

from . import row_bounds
from .diagnosis import diagnose
from .findings import Findings
from .kitchen import open_kitchen, reference_for
from .metrics import metrics, within
from .pool import WORKERS, LocalFindings, run_tasks


def scale_key(la) -> str:
    """The per-tensor decode scale's suffix of a declared layer."""
    return la.decode_scale_key


def checkable(st: Structure, la) -> bool:
    """Whether the layer's tensors are complete and well-typed enough to decode."""
    spec = la.spec
    if spec is None or reference_for(spec) is None or la.logical_shape is not None and len(la.logical_shape) != 2:
        return False
    if getattr(reference_for(spec), "tensors_api", False):
        return _checkable_tensors(st, la)
    for c in spec.companions:
        k = la.keys.get(c.suffix)
        if c.required and k is None:
            return False
        if k is not None and st.infos[k].dtype not in (*c.dtypes, *c.tolerated_dtypes):
            return False        # tolerated dtypes (a half-precision per-tensor scale) decode like ComfyUI: cast
    w = st.infos[la.keys["weight"]]
    if len(w.shape) != 2:
        return False
    if spec.block_scale_key and not spec.block_scales_fit(w.shape, st.infos[la.keys[spec.block_scale_key]].shape):
        return False
    s = st.infos[la.keys[spec.decode_scale_key]]
    return math.prod(s.shape) == 1


def _checkable_tensors(st: Structure, la) -> bool:
    """Every required companion present with an accepted dtype, the stored shapes those of one [N, K] Linear."""
    spec = la.spec
    for c in spec.companions:
        k = la.keys.get(c.suffix)
        if k is None:
            if c.required:
                return False
            continue
        if st.infos[k].dtype not in c.dtypes:
            return False
    w = st.infos[la.keys["weight"]]
    if len(w.shape) != 2:
        return False
    n, k = spec.stored_nk(tuple(w.shape))
    for c in spec.companions:
        key = la.keys.get(c.suffix)
        if key is not None and c.suffix != "weight":
            got = tuple(st.infos[key].shape)
            if got != resolve_shape(c.shape, n, k) and not any(got == resolve_shape(a, n, k) for a in c.alt_shapes):
                if not spec.block_scales_fit(tuple(w.shape), got) or c.suffix != spec.block_scale_key:
                    return False
    return True


def _check_layer_tensors(ck, kr, st, source, la, f, device="cpu") -> int:
    """A layer of a multi-tensor format: every companion loaded, decoded by comfy-kitchen, each row held to the
    format's own per-element worst case."""
    key = la.name + ".weight"
    n, k = source.info(key).shape
    t = kr.load(st, la)
    if device != "cpu":
        t = {s: v.to(device) for s, v in t.items()}
    expect_w = resolve_shape(la.spec.companion("weight").shape, n, k)
    if tuple(t["weight"].shape) != expect_w:
        f.error("numeric.shape", "quantized weight shape does not fit the source weight's shape", [la.name])
        return 0
    nbytes = sum(v.numel() * v.element_size() for v in t.values())
    ref = source.get(key).to(device)
    conf = la.conf if isinstance(la.conf, dict) else {}
    try:
        try:
            (rel, cos, alpha), (bad_rows, n_bad, worst, n_blocks) = kr.check(ck, la.spec, t, ref, n, k, conf)
        except (ValueError, RuntimeError):
            if device == "cpu":
                raise
            # kitchen's CUDA kernels take fewer shapes than its eager reference (the ConvRot rotate kernel refuses
            # group sizes of small layers that stock ComfyUI decodes eagerly): decode this layer on the CPU
            t, ref = {s: v.cpu() for s, v in t.items()}, ref.cpu()
            (rel, cos, alpha), (bad_rows, n_bad, worst, n_blocks) = kr.check(ck, la.spec, t, ref, n, k, conf)
    except (ValueError, RuntimeError) as e:        # kitchen refuses the declared parameters (e.g. a group size)
        f.error("numeric.mismatch", f"comfy-kitchen cannot decode the layer as declared: {str(e)[:200]}", [la.name])
        return nbytes
    if n_bad and within(la.spec, rel, cos):
        f.error("numeric.rows", "comfy-kitchen's dequantization: " + row_bounds.describe(
            la.spec.name, bad_rows, n_bad, n, worst, n_blocks, getattr(la.spec, "block_size", 16)), [la.name])
    if not within(la.spec, rel, cos):
        ref32 = ref.to(torch.float32)
        why = None
        for what, fn in kr.mistakes(ck, t, n, k, conf):     # the format's usual mistakes first: they name it
            try:
                r2, c2, _ = metrics(ref32, fn())
            except Exception:      # a diagnosis attempt must never break the report
                continue
            if within(la.spec, r2, c2):
                why = what
                break
        if why is None:
            class _NoTries:
                @staticmethod
                def mistakes(*_a):
                    return []
            why = diagnose(ck, _NoTries, la, None, None, None, n, k, ref32, alpha, cos)
        f.error("numeric.mismatch", f"comfy-kitchen's dequantization differs from the source "
                                    f"(limits: rel. error <= {la.spec.max_rel_error}, cosine >= "
                                    f"{la.spec.min_cosine}): {why}", [la.name])
    return nbytes


def _check_layer(ck, st, source, la, f, device="cpu") -> int:
    kr = reference_for(la.spec)
    if getattr(kr, "tensors_api", False):
        return _check_layer_tensors(ck, kr, st, source, la, f, device)
    key = la.name + ".weight"
    n, k = source.info(key).shape
    w, scale, bs = load_layer(st, la)
    if device != "cpu":          # kitchen's eager reference is plain torch: it runs on the GPU as is
        w, scale = w.to(device), scale.to(device)
        bs = None if bs is None else bs.to(device)
    expect_w = resolve_shape(la.spec.companion("weight").shape, n, k)
    if tuple(w.shape) != expect_w:
        f.error("numeric.shape", "quantized weight shape does not fit the source weight's shape", [la.name])
        return 0
    nbytes = w.numel() * w.element_size()
    kr = reference_for(la.spec)
    pre = kr.precompute(w)
    kr.stats(la, w, scale, bs, f, pre)      # the statistics cost no extra I/O here
    ref = source.get(key)
    if device != "cpu":
        ref = ref.to(device)
    if hasattr(kr, "metrics_and_rows"):     # tensor metrics + per-row / per-block worst-case bounds
        (rel, cos, alpha), (bad_rows, n_bad, worst, n_blocks) = kr.metrics_and_rows(ck, w, scale, bs, ref, n, k, pre)
    else:
        (rel, cos, alpha), (bad_rows, n_bad, worst, n_blocks) = kr.fast_metrics(ck, w, scale, bs, ref, n, k, pre), \
            ([], 0, None, None)
    if n_bad and within(la.spec, rel, cos):     # the tensor passes, some output channels do not
        f.error("numeric.rows", "comfy-kitchen's dequantization: " + row_bounds.describe(
            la.spec.kernel, bad_rows, n_bad, n, worst, n_blocks), [la.name])
    if not within(la.spec, rel, cos):
        ref = ref.to(torch.float32)
        if not kr.exact_fast_metrics:   # confirm on the full kitchen dequantization
            rel, cos, alpha = metrics(ref, kr.dequantize(ck, w, scale, bs, n, k))
        why = diagnose(ck, kr, la, w, scale, bs, n, k, ref, alpha, cos)
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


def compare(st: Structure, source, f: Findings, progress=None, workers: int | None = None,
            device: str = "cpu", coverage: dict | None = None, allow_unchecked: bool = False) -> int:
    """Compare every tensor with ``source`` (a quant.sources.Source). Returns checkpoint bytes read.
    Tasks (one layer or tensor each) run on ``workers`` threads; at most ``2 * workers`` layers are in
    memory. ``coverage`` (a dict, filled in) gets ``declared``, ``compared`` and ``unchecked`` (layer names):
    a declared quantized layer that could not be decoded is never passed silently -- it is a
    ``numeric.unchecked`` error (a warning only for formats quantgate cannot decode, with ``allow_unchecked``)."""
    declared = {la.name: la for la in st.declared}
    comp = st.companion_keys()
    src_keys = set(source.keys())
    markers = {m.key for m in st.markers}
    tasks = []
    unchecked: list[str] = []
    for la in declared.values():
        key = la.name + ".weight"
        if key in src_keys and la.spec is not None and len(source.info(key).shape) == 2 and checkable(st, la):
            tasks.append(("layer", la))
            continue
        unchecked.append(la.name)
        if key not in src_keys:
            f.warning("numeric.unchecked", "declared quantized layer has no weight in the source: not compared",
                      [la.name])
        elif la.spec is None or reference_for(la.spec) is None:
            add = f.warning if allow_unchecked else f.error
            add("numeric.unchecked", f"format {la.comfy_format!r} cannot be decoded by quantgate's independent "
                                     "dequantizer: the layer's weights were not compared with the source", [la.name])
        else:
            f.error("numeric.unchecked", "declared quantized layer could not be decoded (its tensors are "
                                         "incomplete, mistyped or mis-shaped): not compared with the source",
                    [la.name])
    if coverage is not None:
        coverage.update(declared=len(declared), compared=len(declared) - len(unchecked), unchecked=unchecked)
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
    with open_kitchen() as ck:
        def run(task):
            loc = LocalFindings()
            kind, x = task
            if kind == "layer":
                nb = _check_layer(ck, st, source, x, loc, device)
            else:
                nb = _check_plain(st, source, x, declared.get(x.rsplit(".", 1)[0]), loc)
            return loc, nb

        for loc, nb in run_tasks(tasks, run, workers):
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


def statistics(st: Structure, f: Findings, progress=None) -> int:
    """verify's no-source mode: unquantized float tensors finite, each checkable layer's stored numbers
    plausible (its kitchen reference's ``stats``). Returns the bytes read."""
    nbytes = 0
    comp = st.companion_keys()
    for name, info in st.infos.items():       # unquantized float tensors must be finite (comfy_format §7.9)
        if name in comp or info.dtype not in FLOAT_DTYPES:
            continue
        t = st.src.get(name)
        nbytes += t.numel() * t.element_size()
        if t.numel() and not bool(torch.isfinite(t).all()):
            f.error("stats.nonfinite", "unquantized tensor holds NaN/Inf values", [name])
        del t
    for la in st.declared:
        if not checkable(st, la):
            continue
        w, scale, bs = load_layer(st, la)
        nbytes += w.numel() * w.element_size()
        reference_for(la.spec).stats(la, w, scale, bs, f)
        if progress:
            progress(nbytes)
        del w, bs
    return nbytes


__all__ = ["compare", "statistics", "checkable", "load_layer", "scale_key", "WORKERS"]
