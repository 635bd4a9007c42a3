"""Good and deliberately broken checkpoints for the format-gate tests, generated from seeds
(nothing binary is committed). Each ``plant_*`` takes a good file's tensors/metadata and damages
exactly one thing."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from quant import layout
from quant import nvfp4 as nv
from quant.safetensors_io import SafetensorsFile, save_file

ARCH = "wan22-ti2v-5b-thin"         # dim 256, ffn 512: N%128 == 0 and (K/16)%4 == 0 for block linears
LAYER = "blocks.0.self_attn.q"      # [256, 256]


def load(path) -> tuple[dict, dict]:
    with SafetensorsFile(path) as f:
        return {k: f.get(k).clone() for k in f.keys()}, dict(f.metadata)


def save(tensors: dict, meta: dict, path) -> Path:
    save_file(tensors, path, meta or None)
    return Path(path)


def qmeta(meta: dict) -> dict:
    return json.loads(meta["_quantization_metadata"])


def set_qmeta(meta: dict, q: dict) -> dict:
    meta = dict(meta)
    meta["_quantization_metadata"] = json.dumps(q)
    return meta


def comfy_quant_tensor(conf: dict) -> torch.Tensor:
    return layout.comfy_quant_tensor(conf)


def make_sources(tmp: Path) -> dict[str, Path]:
    """Seeded thin source + good conversions by quant.convert (fp8-legacy, fp8, nvfp4)."""
    from harness import synth
    from quant.convert import convert
    src = synth.make_model(ARCH, tmp / "src.safetensors", seed=3)
    out = {"src": src}
    from quant.formats import TARGETS
    for fmt in TARGETS:
        out[fmt] = tmp / f"good-{fmt}.safetensors"
        convert(src, out[fmt], fmt)
    # nvfp4 with calibrated input scales (activation amax 8..32): used by input_scale plantings
    out["nvfp4-in"] = tmp / "good-nvfp4-input.safetensors"
    t, m = load(out["nvfp4"])
    g = torch.Generator().manual_seed(7)
    for layer in [k[:-len(".weight_scale_2")] for k in t if k.endswith(".weight_scale_2")]:
        amax = float(8 + 24 * torch.rand((), generator=g))
        t[f"{layer}.input_scale"] = torch.tensor(amax / (448 * 6), dtype=torch.float32)
    save(t, m, out["nvfp4-in"])
    return out


def handmade_fp8(tmp: Path, src: Path) -> Path:
    """A good comfy_quant fp8 file written directly with quant.fp8 (not via convert)."""
    from quant import fp8
    t, _ = load(src)
    out, layers = {}, {}
    for k, v in t.items():
        if k.startswith("blocks.") and k.endswith(".weight") and v.dim() == 2 and "norm" not in k:
            layer = k[:-7]
            q, s = fp8.quantize(v)
            conf = {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}
            out[k], out[layer + ".weight_scale"] = q, s
            out[layer + ".comfy_quant"] = comfy_quant_tensor(conf)
            layers[layer] = conf
        else:
            out[k] = v
    return save(out, {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})},
                tmp / "handmade-fp8.safetensors")


# ---- plantings: (good file key, function(tensors, meta) -> (tensors, meta)) ----------------------
def swap_nibbles(t, m):
    w = t[f"{LAYER}.weight"]
    t[f"{LAYER}.weight"] = ((w & 0x0F) << 4) | (w >> 4)
    return t, m


def row_major_scales(t, m):
    w = t[f"{LAYER}.weight"]
    bs = t[f"{LAYER}.weight_scale"]
    n, c = w.shape[0], w.shape[1] * 2 // 16
    logical = nv.unswizzle(bs, n, c)
    assert logical.numel() == bs.numel()           # shapes match: ComfyUI would load it silently
    t[f"{LAYER}.weight_scale"] = logical.contiguous().reshape(bs.shape)
    return t, m


def drop_marker(t, m):
    del t["scaled_fp8"]
    return t, m


def drop_scale_weight(t, m):
    del t[f"{LAYER}.scale_weight"]
    return t, m


def unit_scale(t, m):
    t[f"{LAYER}.weight_scale"] = torch.tensor(1.0)
    return t, m


def inverted_scale(t, m):
    t[f"{LAYER}.weight_scale"] = 1.0 / t[f"{LAYER}.weight_scale"]
    return t, m


def inverted_s2(t, m):
    t[f"{LAYER}.weight_scale_2"] = 1.0 / t[f"{LAYER}.weight_scale_2"]
    return t, m


def fp32_declared_fp8(t, m, src=None):
    t[f"{LAYER}.weight"] = t[f"{LAYER}.weight"].float() * t[f"{LAYER}.weight_scale"]
    return t, m


def e5m2_as_e4m3(t, m):
    w = t[f"{LAYER}.weight"].float() * t[f"{LAYER}.weight_scale"]
    s = w.abs().amax() / 57344.0
    t[f"{LAYER}.weight"] = (w / s).to(torch.float8_e5m2).view(torch.float8_e4m3fn)
    t[f"{LAYER}.weight_scale"] = s.float().reshape(())
    return t, m


def e5m2_dtype(t, m):
    w = t[f"{LAYER}.weight"].float() * t[f"{LAYER}.weight_scale"]
    t[f"{LAYER}.weight"] = (w / t[f"{LAYER}.weight_scale"]).to(torch.float8_e5m2)
    return t, m


def input_scale_is_s2(t, m):
    t[f"{LAYER}.input_scale"] = t[f"{LAYER}.weight_scale_2"].clone()
    return t, m


def input_scale_65x_small(t, m):
    t[f"{LAYER}.input_scale"] = t[f"{LAYER}.input_scale"] / 65.0
    return t, m


def all_input_scales_65x_small(t, m):
    for k in [k for k in t if k.endswith(".input_scale")]:
        t[k] = t[k] / 65.0
    return t, m


def carriers_disagree(t, m):
    q = qmeta(m)
    q["layers"][LAYER] = {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}
    return t, set_qmeta(m, q)


def carriers_disagree_fpmm(t, m):
    t[f"{LAYER}.comfy_quant"] = comfy_quant_tensor({"format": "float8_e4m3fn"})
    return t, m


def legacy_marker_mixed(t, m):
    t["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)
    return t, m


def layers_as_strings(t, m):
    q = qmeta(m)
    q["layers"] = {k: json.dumps(v) for k, v in q["layers"].items()}
    return t, set_qmeta(m, q)


def header_not_json(t, m):
    return t, {**m, "_quantization_metadata": "{not json"}


def header_no_layers(t, m):
    return t, set_qmeta(m, {"format_version": "1.0"})


def unknown_format(t, m):
    q = qmeta(m)
    q["layers"][LAYER] = {"format": "float8_e4m3fn_rowwise"}
    t[f"{LAYER}.comfy_quant"] = comfy_quant_tensor(q["layers"][LAYER])
    return t, set_qmeta(m, q)


def _quantize_fp8_layer(t, m, name_weight, layer):
    from quant import fp8
    q, s = fp8.quantize(t[name_weight].float())
    t[name_weight] = q
    t[f"{layer}.weight_scale"] = s
    conf = {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}
    t[f"{layer}.comfy_quant"] = comfy_quant_tensor(conf)
    qm = qmeta(m)
    qm["layers"][layer] = conf
    return t, set_qmeta(m, qm)


def quantized_norm(t, m):
    return _quantize_fp8_layer(t, m, "blocks.0.norm3.weight", "blocks.0.norm3")


def quantized_conv(t, m):
    return _quantize_fp8_layer(t, m, "patch_embedding.weight", "patch_embedding")


def quantized_bias(t, m):
    t["blocks.0.ffn.0.bias"] = t["blocks.0.ffn.0.bias"].to(torch.float8_e4m3fn)
    return t, m


def quantized_modulation(t, m):
    from quant import fp8
    q, s = fp8.quantize(t["blocks.0.modulation"].float())
    t["blocks.0.modulation"] = q
    t["blocks.0.modulation.weight_scale"] = s
    conf = {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}
    t["blocks.0.modulation.comfy_quant"] = comfy_quant_tensor(conf)
    qm = qmeta(m)
    qm["layers"]["blocks.0.modulation"] = conf
    return t, set_qmeta(m, qm)


def nvfp4_detection_layer(t, m):
    w = t["head.head.weight"].float()
    q, bs, s2 = nv.quantize(w)
    t["head.head.weight"], t["head.head.weight_scale"], t["head.head.weight_scale_2"] = q, bs, s2
    conf = {"format": "nvfp4"}
    t["head.head.comfy_quant"] = comfy_quant_tensor(conf)
    qm = qmeta(m)
    qm["layers"]["head.head"] = conf
    return t, set_qmeta(m, qm)


def scales_without_carrier(t, m):
    del t[f"{LAYER}.comfy_quant"]
    q = qmeta(m)
    del q["layers"][LAYER]
    return t, set_qmeta(m, q)


def no_activation_policy(t, m):
    q = qmeta(m)
    for k in list(q["layers"]):
        q["layers"][k] = {"format": "float8_e4m3fn"}
        t[f"{k}.comfy_quant"] = comfy_quant_tensor(q["layers"][k])
    return t, set_qmeta(m, q)


def legacy_marker_zero(t, m):
    t["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    return t, m


def nan_scale(t, m):
    t[f"{LAYER}.weight_scale"] = torch.tensor(float("nan"))
    return t, m


def negative_scale(t, m):
    t[f"{LAYER}.weight_scale_2"] = -t[f"{LAYER}.weight_scale_2"]
    return t, m


def missing_weight_scale_2(t, m):
    del t[f"{LAYER}.weight_scale_2"]
    return t, m


def wrong_block_scale_shape(t, m):
    w = t[f"{LAYER}.weight"]
    t[f"{LAYER}.weight_scale"] = nv.unswizzle(t[f"{LAYER}.weight_scale"], w.shape[0], w.shape[1] * 2 // 16)[:, :8].contiguous()
    return t, m


def unpacked_nvfp4(t, m):
    w = t[f"{LAYER}.weight"]
    t[f"{LAYER}.weight"] = nv.unpack(w).contiguous()
    return t, m


def extra_key(t, m):
    t[f"{LAYER}.scale_weight"] = t[f"{LAYER}.weight_scale"].clone()
    return t, m


def legacy_e5m2_marker(t, m):
    t["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e5m2)
    return t, m


def dropped_source_tensor(t, m):
    del t["blocks.1.norm3.bias"]
    return t, m


def altered_unquantized(t, m):
    t["blocks.1.norm3.weight"] = t["blocks.1.norm3.weight"] * 1.5
    return t, m


def declared_unquantized(t, m):
    """Declared fp8 but the weight left in the source dtype (bf16)."""
    t[f"{LAYER}.weight"] = (t[f"{LAYER}.weight"].float() * t[f"{LAYER}.weight_scale"]).to(torch.bfloat16)
    return t, m


# name -> (good file, planting, rule expected, needs --source to be caught)
PLANTED = {
    "swapped nibbles": ("nvfp4", swap_nibbles, "numeric.mismatch", True),
    "row-major block scales": ("nvfp4", row_major_scales, "numeric.mismatch", True),
    "missing scaled_fp8 marker": ("fp8-legacy", drop_marker, "carrier.missing", False),
    "missing scale_weight": ("fp8-legacy", drop_scale_weight, "companion.missing", False),
    "unit scale": ("fp8", unit_scale, "scale.magnitude", False),
    "inverted scale": ("fp8", inverted_scale, "scale.magnitude", False),
    "inverted weight_scale_2": ("nvfp4", inverted_s2, "scale.magnitude", False),
    "fp32 weight declared fp8": ("fp8", fp32_declared_fp8, "companion.dtype", False),
    "bf16 weight declared fp8": ("fp8", declared_unquantized, "companion.dtype", False),
    "e5m2 data declared e4m3": ("fp8", e5m2_as_e4m3, "numeric.mismatch", True),
    "e5m2 dtype in an e4m3 layer": ("fp8", e5m2_dtype, "companion.dtype", False),
    "input_scale == weight_scale_2": ("nvfp4-in", input_scale_is_s2, "input_scale.from-weight", False),
    "header and tensor carriers disagree (format)": ("nvfp4", carriers_disagree, "carrier.disagree", False),
    "header and tensor carriers disagree (fpmm)": ("fp8", carriers_disagree_fpmm, "carrier.disagree", False),
    "legacy marker mixed with comfy_quant": ("fp8", legacy_marker_mixed, "carrier.mixed-legacy", False),
    "layers values as strings": ("fp8", layers_as_strings, "carrier.header-invalid", False),
    "header not JSON": ("fp8", header_not_json, "carrier.header-invalid", False),
    "header without layers": ("fp8", header_no_layers, "carrier.header-invalid", False),
    "unknown format": ("fp8", unknown_format, "carrier.unknown-format", False),
    "quantized norm": ("fp8", quantized_norm, "layer.not-linear", False),
    "quantized conv": ("fp8", quantized_conv, "layer.not-linear", False),
    "quantized bias": ("fp8", quantized_bias, "tensor.dtype", False),
    "quantized modulation table": ("fp8", quantized_modulation, "layer.not-linear", False),
    "nvfp4 detection layer": ("nvfp4", nvfp4_detection_layer, "layer.detection", False),
    "scales without carrier": ("fp8", scales_without_carrier, "carrier.missing", False),
    "NaN scale": ("fp8", nan_scale, "scale.value", False),
    "negative weight_scale_2": ("nvfp4", negative_scale, "scale.value", False),
    "missing weight_scale_2": ("nvfp4", missing_weight_scale_2, "companion.missing", False),
    "block scales wrong shape": ("nvfp4", wrong_block_scale_shape, "companion.shape", False),
    "nvfp4 weight not packed": ("nvfp4", unpacked_nvfp4, "companion.shape", False),
    "legacy key in comfy layer": ("fp8", extra_key, "companion.unexpected", False),
    "e5m2 legacy marker": ("fp8-legacy", legacy_e5m2_marker, "marker.dtype", False),
    "source tensor dropped": ("fp8", dropped_source_tensor, "numeric.source-missing", True),
    "unquantized tensor altered": ("fp8", altered_unquantized, "numeric.unquantized-mismatch", True),
}

# plantings that are warnings (exit 0) unless --strict
WARNINGS = {
    "fp8 without input_scale or full_precision_matrix_mult": ("fp8", no_activation_policy, "activation.policy"),
    "legacy [0] marker without scale_input": ("fp8-legacy", legacy_marker_zero, "activation.unit-scale"),
    # header-only, a scale 65x small looks like a layer with tiny activations (trained models have them): a
    # warning without --calibration (which judges the clip level against recorded activations); the render
    # gate's activation emulation fails such a file on its renders
    "input_scale 65x too small (one layer)": ("nvfp4-in", input_scale_65x_small, "input_scale.implausible"),
    "input_scale 65x too small (all layers)": ("nvfp4-in", all_input_scales_65x_small, "input_scale.implausible"),
}


def nan_in_norm(t, m):
    t["blocks.1.norm3.weight"][3] = float("nan")
    return t, m


PLANTED["NaN in an unquantized tensor"] = ("fp8", nan_in_norm, "stats.nonfinite", False)


# ---- the formats ComfyUI 0.33 ships beside fp8/nvfp4 (issue 24): one factory per mistake a converter makes -----
# Each takes the good file's (tensors, meta) and returns the damaged pair. NEW_FORMAT_DEFECTS: name -> (good file,
# factory, rule verify must report with --source, words the diagnosis must contain or "").
def _conf(t, layer=LAYER) -> dict:
    return json.loads(bytes(t[f"{layer}.comfy_quant"].tolist()).decode())


def _decoded(t, fmt_name: str, layer=LAYER) -> torch.Tensor:
    """The layer's weight decoded by quantgate's own format object (the factories re-encode it wrongly)."""
    from quant import formats
    f = formats.get(fmt_name)
    tensors = {c.suffix: t[f"{layer}.{c.suffix}"] for c in f.companions if f"{layer}.{c.suffix}" in t}
    g = _conf(t, layer).get("convrot_groupsize")
    return f.dequantize(tensors, group=g) if g else f.dequantize(tensors)


def int8_unrotated_declared_convrot(t, m):
    """Plain per-row int8 codes of the weight, still declared ``"convrot": true``."""
    from quant.formats.int8 import quantize_rowwise
    q, s = quantize_rowwise(_decoded(t, "int8-convrot"))
    t[f"{LAYER}.weight"], t[f"{LAYER}.weight_scale"] = q, s
    return t, m


def int8_wrong_group(t, m):
    """Rotated in groups of 64 but declared ``convrot_groupsize`` 256."""
    from quant.formats import convrot
    from quant.formats.int8 import quantize_rowwise
    assert _conf(t)["convrot_groupsize"] == 256
    q, s = quantize_rowwise(convrot.rotate(_decoded(t, "int8-convrot"), 64))
    t[f"{LAYER}.weight"], t[f"{LAYER}.weight_scale"] = q, s
    return t, m


def int8_per_tensor_scale(t, m):
    """Per-row codes with one per-tensor scale (the largest row's) in place of the [N, 1] scales."""
    t[f"{LAYER}.weight_scale"] = t[f"{LAYER}.weight_scale"].max().reshape(())
    return t, m


def int8_negated_rows(t, m):
    w = t[f"{LAYER}.weight"]
    w[[3, 7]] = (-w[[3, 7]].to(torch.int16)).clamp(-128, 127).to(torch.int8)
    return t, m


def _int4_codes(t, fn, layer=LAYER, signed=True):
    from quant.formats import convrot
    codes = convrot.unpack_int4(t[f"{layer}.weight"], signed=signed)
    t[f"{layer}.weight"] = convrot.pack_int4(fn(codes))
    return t


def int4_swapped_nibbles(t, m):
    """The even column in the HIGH nibble (kitchen stores it in the low one)."""
    w = t[f"{LAYER}.weight"].view(torch.uint8)
    t[f"{LAYER}.weight"] = ((w >> 4) | (w << 4)).view(torch.int8)
    return t, m


def int4_offset_binary(t, m):
    """Codes stored as q + 8 (unsigned nibbles) instead of two's complement: every sign flips in decoding."""
    w = t[f"{LAYER}.weight"].view(torch.uint8)
    t[f"{LAYER}.weight"] = (w ^ 0x88).view(torch.int8)
    return t, m


def int4_transposed(t, m):
    """Codes packed from the transposed weight (K x N), stored in the [N, K/2] shape ComfyUI expects (N == K)."""
    def tr(c):
        return c.t().contiguous()
    return _int4_codes(t, tr), m


def int4_negated_rows(t, m):
    def neg(c):
        c = c.clone()
        c[[3, 7]] = -c[[3, 7]]
        return c
    return _int4_codes(t, neg), m


def w4a8_mirrored_rows(t, m):
    """Two rows' codebook indices mirrored (i -> 15 - i): the rows decode about negated."""
    def mirror(c):
        c = c.clone()
        c[[3, 7]] = 15 - c[[3, 7]]
        return c
    return _int4_codes(t, mirror, signed=False), m


def w4a8_group_32(t, m):
    """Declares ``group_size`` 32 for scales made per 16."""
    conf = dict(_conf(t), group_size=32)
    t[f"{LAYER}.comfy_quant"] = comfy_quant_tensor(conf)
    q = qmeta(m)
    q["layers"][LAYER] = conf
    return t, set_qmeta(m, q)


def mxfp8_exponents_plus_one(t, m):
    """Every non-zero E8M0 block exponent one too high (every block decodes 2x)."""
    s = t[f"{LAYER}.weight_scale"]
    t[f"{LAYER}.weight_scale"] = torch.where(s > 0, s + 1, s)
    return t, m


def mxfp8_one_block_plus_one(t, m):
    """One block's exponent one too high: 32 values 2x, invisible in the whole tensor's error."""
    from quant.formats import mxfp8
    s = t[f"{LAYER}.weight_scale"]
    w = t[f"{LAYER}.weight"]
    e = mxfp8.unswizzle(s, w.shape[0], w.shape[1] // 32).clone()
    e[5, 2] += 1
    t[f"{LAYER}.weight_scale"] = mxfp8.swizzle(e).reshape(s.shape)
    return t, m


def fp8_codes_negated_rows(t, m):
    w = t[f"{LAYER}.weight"]
    w[[3, 7]] = (-w[[3, 7]].float()).to(w.dtype)
    return t, m


NEW_FORMAT_DEFECTS = {
    "int8-convrot: unrotated weights declared convrot": ("int8-convrot", int8_unrotated_declared_convrot,
                                                        "numeric.mismatch", "not ConvRot-rotated"),
    "int8-convrot: wrong group size": ("int8-convrot", int8_wrong_group, "numeric.mismatch", "group size 64"),
    "int8-convrot: per-tensor scale": ("int8-convrot", int8_per_tensor_scale, "companion.shape", ""),
    "int8: per-tensor scale where per-row is expected": ("int8", int8_per_tensor_scale, "numeric.", ""),
    # two of 256 rows negated: rel. error ~0.18 over the tensor -> numeric.mismatch; fewer -> numeric.rows
    "int8: negated rows": ("int8", int8_negated_rows, "numeric.", ""),
    "int8-convrot: negated rows": ("int8-convrot", int8_negated_rows, "numeric.", ""),
    "w4a4: swapped nibbles": ("w4a4-convrot", int4_swapped_nibbles, "numeric.mismatch", "nibbles are swapped"),
    "w4a4: sign-flipped (offset-binary) int4": ("w4a4-convrot", int4_offset_binary, "numeric.mismatch", "offset-binary"),
    "w4a4: transposed packing": ("w4a4-convrot", int4_transposed, "numeric.mismatch", ""),
    "w4a4: negated rows": ("w4a4-convrot", int4_negated_rows, "numeric.", ""),
    "w4a8: swapped nibbles": ("w4a8-int8", int4_swapped_nibbles, "numeric.mismatch", "nibbles are swapped"),
    "w4a8: mirrored rows": ("w4a8-int8", w4a8_mirrored_rows, "numeric.", ""),
    "w4a8: wrong group size": ("w4a8-int8", w4a8_group_32, "numeric.mismatch", ""),
    "mxfp8: e8m0 exponents off by one": ("mxfp8", mxfp8_exponents_plus_one, "numeric.mismatch", "off by +1"),
    "mxfp8: one block exponent off by one": ("mxfp8", mxfp8_one_block_plus_one, "numeric.rows", "blocks of 32"),
    "mxfp8: negated rows": ("mxfp8", fp8_codes_negated_rows, "numeric.", ""),
}


def destroyed(t, m):
    """Every quantized weight negated and every decode scale x10 (issue 24's false PASS, for any format): the
    codes of each declared layer are negated in their own encoding, float scales multiplied by 10."""
    from quant.checkpoint import split_key
    from quant.formats import for_conf, marker_format
    confs = {k[: -len(".comfy_quant")]: json.loads(bytes(v.tolist()).decode())
             for k, v in t.items() if k.endswith(".comfy_quant")}
    legacy = "scaled_fp8" in t
    for layer in {split_key(k)[0] for k in t if split_key(k) and k.endswith(".weight")}:
        fmt = marker_format() if legacy and f"{layer}.scale_weight" in t else for_conf(confs.get(layer))
        if fmt is None:
            continue
        wk = f"{layer}.weight"
        w = t[wk]
        if fmt.kernel in ("w4a4",):
            t = _int4_codes(t, lambda c: -c, layer)
        elif fmt.kernel in ("w4a8",):
            t = _int4_codes(t, lambda c: 15 - c, layer, signed=False)
        elif fmt.kernel == "nvfp4":
            t[wk] = w ^ 0x88                      # E2M1 sign bits of both nibbles
        elif w.dtype == torch.int8:
            t[wk] = (-w.to(torch.int16)).clamp(-128, 127).to(torch.int8)
        else:
            t[wk] = (-w.float()).to(w.dtype)
        key = f"{layer}.{fmt.decode_scale_key}"
        if t[key].dtype in (torch.float32, torch.float16, torch.bfloat16):
            t[key] = t[key] * 10
        elif fmt.kernel == "mxfp8":                # E8M0 exponents: +3 = every block scale x8
            t[key] = torch.where(t[key] > 0, t[key] + 3, t[key])
    return t, m
