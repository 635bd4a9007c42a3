"""Activation scales that are defaults rather than calibrations: the 'noisy in ComfyUI >= 0.4' family."""
import json

import torch
from safetensors import safe_open

from harness.verify import verify
from quant.convert import convert
from quant.layout import comfy_quant_tensor
from quant.safetensors_io import save_file


def _fp8_with_input_scales(src, tmp_path, value_of):
    good = tmp_path / "good.safetensors"
    convert(src, good, "fp8", force=True)
    with safe_open(str(good), "pt") as f:
        meta, t = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    q = json.loads(meta["_quantization_metadata"])
    for i, (L, c) in enumerate(q["layers"].items()):
        c.pop("full_precision_matrix_mult", None)
        t[f"{L}.comfy_quant"] = comfy_quant_tensor(c)
        t[f"{L}.input_scale"] = torch.tensor(value_of(i), dtype=torch.float32)
    meta["_quantization_metadata"] = json.dumps(q)
    out = tmp_path / f"in-{value_of(0)}-{value_of(1)}.safetensors"
    save_file(t, out, meta)
    return out


def _warned(rep, rule):
    return rule in {f.rule for f in rep.findings.all() if f.severity == "warning"}


def test_unit_input_scale_is_flagged(thin_wan5b, tmp_path):
    rep = verify(_fp8_with_input_scales(thin_wan5b, tmp_path, lambda i: 1.0), thin_wan5b)
    assert rep.passed and _warned(rep, "activation.unit-scale")
    assert not verify(_fp8_with_input_scales(thin_wan5b, tmp_path, lambda i: 1.0), thin_wan5b, strict=True).passed


def test_one_shared_input_scale_is_flagged_calibrated_ones_are_not(thin_wan5b, tmp_path):
    shared = verify(_fp8_with_input_scales(thin_wan5b, tmp_path, lambda i: 0.05), thin_wan5b)
    assert _warned(shared, "input_scale.implausible")
    calibrated = verify(_fp8_with_input_scales(thin_wan5b, tmp_path, lambda i: 0.02 + 0.003 * i), thin_wan5b)
    assert calibrated.passed and not calibrated.findings.rules("warning"), calibrated.lines()
