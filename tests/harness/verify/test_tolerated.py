"""Files ComfyUI loads correctly but that are not written the canonical way get warnings, not errors:
a gate that rejects working files is as useless as one that passes broken ones."""
import pytest
import torch
from safetensors import safe_open

from harness.verify import verify
from quant.convert import convert
from quant.safetensors_io import save_file


@pytest.mark.parametrize("fmt,suffix", [("fp8-legacy", "scale_weight"), ("fp8", "weight_scale"),
                                        ("nvfp4", "weight_scale_2")])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_per_tensor_scale_is_a_warning(thin_wan5b, tmp_path, fmt, suffix, dtype):
    good = tmp_path / "good.safetensors"
    convert(thin_wan5b, good, fmt)
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    for k in t:
        if k.endswith("." + suffix):
            t[k] = t[k].to(dtype)
    bad = tmp_path / "half.safetensors"
    save_file(t, bad, meta)
    rep = verify(bad, thin_wan5b)
    assert rep.passed, rep.lines()
    assert "companion.dtype-cast" in {f.rule for f in rep.findings.all() if f.severity == "warning"}
    assert not verify(bad, thin_wan5b, strict=True).passed


def test_nvfp4_block_scales_in_bf16_are_an_error(thin_wan5b, tmp_path):
    """Block scales are re-viewed as e4m3 bytes, not value-cast: a 2-byte dtype is wrong."""
    good = tmp_path / "good.safetensors"
    convert(thin_wan5b, good, "nvfp4")
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
        t = {k: f.get_tensor(k) for k in f.keys()}
    L = "blocks.0.ffn.0"
    t[f"{L}.weight_scale"] = t[f"{L}.weight_scale"].float().to(torch.bfloat16)
    bad = tmp_path / "bs_bf16.safetensors"
    save_file(t, bad, meta)
    rep = verify(bad, thin_wan5b)
    assert not rep.passed and "companion.dtype" in {f.rule for f in rep.findings.all() if f.severity == "error"}
