"""The render gate's activation emulation for the new formats is the computation ComfyUI's native kernel does:
the emulated input times the dequantized weight equals comfy-kitchen's own int8 / ConvRot / W4A4 / W4A8 linear
(eager backend) on the same file's tensors; the policy comes from the candidate file."""
from __future__ import annotations

import comfy_kitchen as ck
import pytest
import torch

from harness.custom_nodes.quantgate_calibration import FAKE
from quant import formats

TINY_K = 256


def _x(m=24, k=TINY_K):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(m, k, generator=g)
    x[:, 5] *= 30                                     # an outlier channel (what ConvRot is for)
    return x


def _w(n=48, k=TINY_K):
    return torch.randn(n, k, generator=torch.Generator().manual_seed(4)) * 0.05


@pytest.mark.parametrize("fmt", ["int8", "int8-convrot", "w4a4-convrot", "w4a8-int8"])
def test_emulated_linear_is_kitchens_native_linear(fmt):
    from comfy_kitchen.tensor import convrot_w4a4_linear, w4a8_int8_linear
    f = formats.get(fmt)
    w, x = _w(), _x()
    t = f.quantize(w)
    conf = f.layer_config(False, None, tuple(w.shape))
    emu = f.emulation(conf)
    g = conf.get("convrot_groupsize")
    w_hat = f.dequantize(t, tuple(w.shape), group=g) if g else f.dequantize(t, tuple(w.shape))
    ours = FAKE[emu["format"]](x, None, emu) @ w_hat.T
    with ck.use_backend("eager"):
        if fmt in ("int8", "int8-convrot"):
            theirs = ck.int8_linear(x, t["weight"], t["weight_scale"], None, torch.float32,
                                    convrot=bool(g), convrot_groupsize=g or 256)
        elif fmt == "w4a4-convrot":
            theirs = convrot_w4a4_linear(x, t["weight"], t["weight_scale"], None, g)
        else:
            theirs = w4a8_int8_linear(x, t["weight"], t["weight_s_rel"], t["weight_s_channel"],
                                      t["weight_codebook"], None, None, 16, g, torch.float32)
    rel = float((ours - theirs).norm() / theirs.norm())
    assert rel < 1e-4, rel
    # and the activation quantization matters: without it the output differs by more than that
    assert float((x @ w_hat.T - theirs).norm() / theirs.norm()) > 10 * rel


def test_mxfp8_emulation_is_blockwise_e4m3():
    x = _x()
    y = FAKE["mxfp8"](x, None, {"format": "mxfp8"})
    assert y.shape == x.shape and torch.equal(FAKE["mxfp8"](y, None, {}), y)      # already on the grid
    blocks = (y - x).abs().reshape(x.shape[0], -1, 32).amax(-1)
    assert float(blocks.max()) <= float(x.abs().reshape(x.shape[0], -1, 32).amax(-1).max()) / 8


def test_policy_and_description_come_from_the_file(tmp_path):
    from harness.render import emulation
    from quant.convert import convert
    from quant.safetensors_io import save_file
    src = tmp_path / "src.safetensors"
    save_file({"blocks.0.ffn.0.weight": _w(128, 256).to(torch.bfloat16),
               "blocks.0.ffn.2.weight": _w(256, 128).to(torch.bfloat16)}, src)
    out = tmp_path / "w4a4.safetensors"
    convert(src, out, "w4a4-convrot", preset="smart")
    pol = emulation.activation_policy(out)["layers"]
    assert pol["blocks.0.ffn.0"] == {"format": "w4a4", "group": 256, "input_scale": None}
    assert pol["blocks.0.ffn.2"] == {"format": "w4a4", "group": 64, "input_scale": None}
    assert emulation.describe({"layers": pol}) == {"w4a4 dynamic per-row after ConvRot (group 256)": 1,
                                                   "w4a4 dynamic per-row after ConvRot (group 64)": 1}
