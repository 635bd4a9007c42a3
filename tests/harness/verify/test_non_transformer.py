"""VAEs and text encoders: `inspect` and `verify` recognise them and say which modules ComfyUI's quantized
ops can consume. Names and shapes are ComfyUI's own (tests/data/non_transformer_layouts.json, dumped from
ComfyUI's WanVAE (2.1, 2.2) and T5 classes with the UMT5-XXL config; tests/data/make_non_transformer_layouts.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness.cli import main as cli_main
from quant import model_kind
from quant.safetensors_io import save_file

LAYOUTS = json.loads((Path(__file__).resolve().parents[2] / "data" / "non_transformer_layouts.json").read_text())


def _infos(entries, dtype="BF16", overrides=None):
    overrides = overrides or {}
    return {n: SimpleNamespace(dtype=overrides.get(n, dtype), shape=tuple(s)) for n, s in entries}


def _file(path, entries, seed=0, cast=()):
    g = torch.Generator().manual_seed(seed)
    t = {}
    for n, s in entries:
        v = (torch.randn(s, generator=g) * 0.05).to(torch.bfloat16)
        if n.endswith((".gamma",)) or "layer_norm" in n:
            v = torch.ones(s, dtype=torch.bfloat16)
        t[n] = v.to(torch.float8_e4m3fn) if n in cast else v
    save_file(t, path)
    return path


def _run(capsys, *argv):
    rc = cli_main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_full_size_layouts_are_recognised():
    v21 = model_kind.detect(_infos(LAYOUTS["wan21_vae"]["full"]))
    assert (v21.name, v21.role, v21.facts) == ("wan21-vae", "vae", {"z_dim": 16, "dim": 96})
    # 126.9 M parameters: the public Wan2.1_VAE (bf16 file 254 MB)
    assert sum(math.prod(s) for _, s in LAYOUTS["wan21_vae"]["full"]) == 126_892_531
    assert v21.counts() == {"conv3d": 61, "conv2d": 10, "norm": 52}       # no Linear: to_qkv/proj are 1x1 convs
    assert not [m for m in v21.modules if m.consumable]
    v22 = model_kind.detect(_infos(LAYOUTS["wan22_vae"]["full"]))
    assert (v22.name, v22.facts) == ("wan22-vae", {"z_dim": 48, "dim": 160})
    assert v22.counts()["conv3d"] == 62 and "linear" not in v22.counts()
    t5 = model_kind.detect(_infos(LAYOUTS["umt5_xxl"]["full"]))
    assert (t5.name, t5.role) == ("umt5-xxl", "text-encoder")
    assert t5.facts == {"blocks": 24, "d_model": 4096, "d_ff": 10240, "vocab": 256384, "umt5": True}
    # 24 x (q, k, v, o, wi_0, wi_1, wo) = 168 Linears; 24 relative_attention_bias + shared; 2 x 24 + 1 norms
    assert t5.counts() == {"linear": 168, "embedding": 25, "norm": 49}
    assert "encoder.block.7.layer.1.DenseReluDense.wo" in t5.as_dict()["consumable_by_quantized_ops"]
    # plain T5 (Flux's t5xxl): relative_attention_bias only in block 0
    t5_plain = [(n, s) for n, s in LAYOUTS["umt5_xxl"]["full"]
                if not (n.endswith("relative_attention_bias.weight") and not n.startswith("encoder.block.0."))]
    assert model_kind.detect(_infos(t5_plain)).name == "t5-xxl"
    # a diffusion transformer is not one of these
    from quant import arch
    a = next(iter(arch.ALL.values()))
    assert model_kind.detect(_infos(list(a.tensors()))) is None


def test_inspect_and_verify_a_bf16_vae_and_text_encoder(tmp_path, capsys):
    vae = _file(tmp_path / "wan_2.1_vae_bf16.safetensors", LAYOUTS["wan21_vae"]["thin"])
    rc, out, _ = _run(capsys, "inspect", vae, "--json")
    assert rc == 0
    mk = json.loads(out)["model_kind"]
    assert mk["kind"] == "wan21-vae" and mk["modules"] == {"conv3d": 61, "conv2d": 10, "norm": 52}
    assert mk["consumable_by_quantized_ops"] == [] and mk["quantized"] == []
    rc, out, _ = _run(capsys, "inspect", vae)
    assert "kind      WAN 2.1 VAE (z 16, dim 8): 0 Linear module(s)" in out
    rc, out, _ = _run(capsys, "verify", vae, "-v")
    assert rc == 0, out
    assert "info: model.kind: WAN 2.1 VAE" in out and "not quantizable in ComfyUI: 10 conv2d, 61 conv3d, 52 norm" in out
    te = _file(tmp_path / "umt5_thin_bf16.safetensors", LAYOUTS["umt5_xxl"]["thin"])
    rc, out, _ = _run(capsys, "inspect", te, "--json")
    mk = json.loads(out)["model_kind"]
    assert mk["kind"] == "umt5" and mk["modules"] == {"linear": 21, "embedding": 4, "norm": 7}


def test_fp8_cast_vae_conv_weight_is_flagged(tmp_path, capsys):
    conv = "decoder.upsamples.0.residual.2.weight"
    entries = LAYOUTS["wan21_vae"]["thin"]
    assert dict((n, s) for n, s in entries)[conv][2:] == [3, 3, 3]             # a CausalConv3d
    f = _file(tmp_path / "wan_2.1_vae_fp8_e4m3fn.safetensors", entries, cast=(conv,))
    rc, out, _ = _run(capsys, "verify", f, "--json")
    assert rc == 1
    rep = json.loads(out)
    bad = next(x for x in rep["findings"] if x["rule"] == "model.vae-fp8")
    assert bad["severity"] == "error" and bad["layers"] == [conv[: -len(".weight")]]
    assert "without quantized ops" in bad["message"]
    rc, out, _ = _run(capsys, "inspect", f, "--json")
    assert json.loads(out)["model_kind"]["quantized"] == [conv[: -len(".weight")]]


def test_fp8_text_encoder_linears_pass_norms_and_embeddings_are_named(tmp_path, capsys):
    from harness.fixtures.planted.render_defects import fp8_file
    entries = LAYOUTS["umt5_xxl"]["thin"]
    src = _file(tmp_path / "umt5_thin_bf16.safetensors", entries, seed=3)
    fp8 = fp8_file(src, tmp_path / "umt5_thin_fp8_scaled.safetensors", "legacy")
    rc, out, _ = _run(capsys, "verify", fp8, "--source", src, "--json")
    rep = json.loads(out)
    rules = {x["rule"]: x for x in rep["findings"]}
    assert "model.kind" in rules and "UMT5" in rules["model.kind"]["message"]
    # fp8_file scales every 2-D weight, including the 4 Embeddings: named, as a warning
    assert sorted(rules["model.quantized-embedding"]["layers"]) == sorted(
        n[: -len(".weight")] for n, _ in entries if n.endswith(("shared.weight", "relative_attention_bias.weight")))
    assert rep["quantized_layers"]["fp8-legacy"] == 25
    assert "model.vae-fp8" not in rules and "model.quantized-norm" not in rules
    norm = "encoder.final_layer_norm.weight"
    bad = _file(tmp_path / "umt5_norm_fp8.safetensors", entries, cast=(norm,))
    rc, out, _ = _run(capsys, "verify", bad, "--json")
    assert rc == 1
    f = next(x for x in json.loads(out)["findings"] if x["rule"] == "model.quantized-norm")
    assert f["layers"] == ["encoder.final_layer_norm"]
