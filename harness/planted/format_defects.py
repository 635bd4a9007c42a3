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
    """WAN's head.head in NVFP4. NOT a defect (issue 21): ComfyUI's detection reads only head.head.weight.shape[0]
    (4 x out_dim, a multiple of 16), which NVFP4 packing keeps; verify reports it as an info
    (tests/harness/verify/test_detection.py)."""
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
