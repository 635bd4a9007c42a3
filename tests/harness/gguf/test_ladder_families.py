"""The quality ladder on each model family's trained tiny reference (issue 23): Qwen-Image (the committed
one-head core: real tensor names, 128 wide; the real-width expansion is 24 copies of it, so the same
per-layer errors up to block tiling, and its ladder takes ~110 s on this 2-core box) and WAN 2.2 A14B's
two experts, each expert against its own source. FP8 under the preset detected from the keys; NVFP4
under the detected preset and, for the one-block Qwen (whose preset keeps the first and last block in
FP8, i.e. everything), under ``smart``. FP8 and NVFP4 errors are cross-checked against comfy-kitchen's
eager dequantizers (not quantgate's own decoders)."""
import math

import pytest
import torch

from harness.gguf import ladder
from harness.train import a14b_tiny, registry
from quant.safetensors_io import SafetensorsFile


def _kitchen_err2(w: torch.Tensor, fmt: str) -> float:
    import comfy_kitchen as ck
    from quant import formats as F
    with ck.use_backend("eager"):
        q = F.get(fmt).quantize(w)
        if fmt == "fp8":
            d = ck.dequantize_per_tensor_fp8(q["weight"], q["weight_scale"], torch.float32)
        else:
            d = ck.dequantize_nvfp4(q["weight"], q["weight_scale_2"], q["weight_scale"], torch.float32)
    return float((w.double() - d.double()).pow(2).sum())


def _check(lad, src, family_layers, fp8, nv):
    assert fp8.label.startswith("fp8") and nv.label.startswith("nvfp4")
    for pat in family_layers:                      # the family's own Linears are on the ladder
        assert any(pat in n for n in lad.layers), (pat, lad.layers[:8])
    # whole model: finite, and FP8 (8 bits) above NVFP4-mixed (4 bits where the preset allows)
    assert math.isfinite(lad.sqnr(fp8)) and math.isfinite(lad.sqnr(nv))
    assert lad.sqnr(fp8) > lad.sqnr(nv)
    # one layer that both columns quantize, decoded by comfy-kitchen
    n = next(x for x in lad.layers if fp8.what[x] == "fp8" and nv.what[x] == "nvfp4")
    with SafetensorsFile(src) as f:
        w = f.get(n).float()
    assert fp8.err2[n] == pytest.approx(_kitchen_err2(w, "fp8"), rel=1e-6)
    assert nv.err2[n] == pytest.approx(_kitchen_err2(w, "nvfp4"), rel=1e-6)
    return n


@pytest.mark.parametrize("name", ["qwen-image-tiny", "qwen-image-edit-tiny"])
def test_ladder_qwen_image_tiny(name):
    """The joint block's image and text MLPs and attention projections are on the ladder; the detected
    preset is Qwen-Image's."""
    src = registry.weights(name)[0]
    lad = ladder.run(src, (), ("fp8", "nvfp4"), [None, "smart"])
    by = {c.label: c for c in lad.columns}
    assert "fp8 qwen-image" in by, list(by)
    _check(lad, src, ("transformer_blocks.0.img_mlp", "transformer_blocks.0.txt_mlp", "transformer_blocks.0.attn.to_q",
                      "transformer_blocks.0.attn.add_q_proj"), by["fp8 qwen-image"], by["nvfp4 smart"])


@pytest.mark.parametrize("slot", ["model", "model_low"])
def test_ladder_a14b_tiny_each_expert(slot):
    """Each A14B expert on its own ladder (its own source); the two experts' errors differ (two trained
    models, not one file twice)."""
    srcs = registry.sources(a14b_tiny.NAME)
    lad = ladder.run(srcs[slot], (), ("fp8", "nvfp4"), [None])
    n = _check(lad, srcs[slot], ("self_attn.q", "cross_attn.k", "ffn.0"), *lad.columns)
    other = ladder.run(srcs["model_low" if slot == "model" else "model"], (), ("fp8",), [None])
    assert other.columns[0].err2[n] != lad.columns[0].err2[n]
