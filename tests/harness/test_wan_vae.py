"""harness/wan_vae.py (the GPU timing's decoder) has ComfyUI's WAN 2.1 VAE decoder parameters: the same
names and shapes as ComfyUI's own class (tests/data/non_transformer_layouts.json), at full and thin size."""
import json
from pathlib import Path

import torch

from harness import wan_vae

LAYOUTS = json.loads((Path(__file__).resolve().parents[1] / "data" / "non_transformer_layouts.json").read_text())


def _decoder_part(entries):
    return {n: tuple(s) for n, s in entries if n.startswith(("decoder.", "conv2."))}


def test_names_and_shapes_match_comfyui():
    with torch.device("meta"):
        full = wan_vae.WanVAEDecoder(96, 16)
    assert {n: tuple(p.shape) for n, p in full.state_dict().items()} == _decoder_part(LAYOUTS["wan21_vae"]["full"])
    thin = wan_vae.build(dim=8, dtype=torch.float32)
    assert {n: tuple(p.shape) for n, p in thin.state_dict().items()} == _decoder_part(LAYOUTS["wan21_vae"]["thin"])


def test_decode_shapes_and_fp8_cast_variant():
    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ref = wan_vae.build(dim=8, dtype=torch.float32)
    f8 = wan_vae.build(dim=8, dtype=torch.float32, fp8=True)
    with torch.inference_mode():
        a, b = ref(z), f8(z)
    assert a.shape == (1, 3, 9, 32, 32)                  # 1 + 4 (T - 1) frames, x8 spatially
    assert torch.isfinite(b).all()
    assert f8.decoder.conv1.weight.dtype == torch.float8_e4m3fn and f8.decoder.head[0].gamma.dtype == torch.float32
    assert wan_vae.weight_bytes(f8) < 0.3 * wan_vae.weight_bytes(ref)
    rel = ((a - b).pow(2).mean().sqrt() / a.pow(2).mean().sqrt()).item()
    assert 0 < rel < 0.25                                  # same network, fp8-rounded weights
