"""comfy-quants' INT8 W8A8 dialect for the ComfyUI-INT8-Fast custom node (marker without "format": {"convrot":
true, "convrot_groupsize": 256, "per_row": true}; F32 weight_scale [N, 1]; no input_scale) is recognised, checked
numerically through comfy-kitchen, and named with the loader it needs; destroyed, it fails."""
from __future__ import annotations

import json

import pytest
import torch

from harness.fixtures.planted import format_defects as P
from harness.verify import verify


def _int8_fast(src_t: dict) -> tuple[dict, dict]:
    """Built as comfy-quants documents it (docs/formats/int8_w8a8.md), with comfy-kitchen's own quantizer."""
    from comfy_kitchen.backends.eager.quantization import quantize_int8_convrot_weight, quantize_int8_rowwise
    out = {}
    for k, v in src_t.items():
        if k.startswith("blocks.") and k.endswith(".weight") and v.dim() == 2 and "norm" not in k \
                and "modulation" not in k:
            layer = k[:-7]
            if v.shape[1] % 256 == 0:
                q, s = quantize_int8_convrot_weight(v.float(), 256)
                conf = {"convrot": True, "convrot_groupsize": 256, "per_row": True}
            else:
                q, s = quantize_int8_rowwise(v.float())
                conf = {"convrot": False, "per_row": True}
            out[k], out[layer + ".weight_scale"] = q, s.float().reshape(-1, 1)
            out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)
        else:
            out[k] = v
    return out, {}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from harness.fixtures import synth
    d = tmp_path_factory.mktemp("int8fast")
    src = synth.make_model(P.ARCH, d / "src.safetensors", seed=3)
    t, m = _int8_fast(P.load(src)[0])
    good = P.save(t, m, d / "int8fast.safetensors")
    t, m = P.destroyed(*P.load(good))
    return {"src": src, "good": good, "destroyed": P.save(t, m, d / "destroyed.safetensors")}


def test_int8_fast_is_recognised_checked_and_its_loader_named(files):
    rep = verify(files["good"], files["src"])
    assert rep.passed, [f.line() for f in rep.findings.all()]
    assert rep.coverage["unchecked"] == [] and rep.coverage["compared"] == rep.coverage["declared"] > 0
    warn = [f for f in rep.findings.all() if f.rule == "loader.custom-node"]
    assert warn and "ComfyUI-INT8-Fast" in warn[0].message and "stock ComfyUI" in warn[0].message
    from quant.checkpoint import build
    from quant.sources import open_source
    with open_source(files["good"]) as s:
        confs = [la.conf for la in build(s).declared]
    assert confs and all(c == {"convrot": True, "convrot_groupsize": 256, "per_row": True} for c in confs)


def test_int8_fast_destroyed_fails(files):
    rep = verify(files["destroyed"], files["src"])
    assert not rep.passed and "numeric.mismatch" in {f.rule for f in rep.findings.all() if f.severity == "error"}


def test_inspect_names_the_loader(files, cli):
    r = cli("inspect", files["good"], "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert "int8-fast" in s["quantized_formats"]
    assert any("ComfyUI-INT8-Fast" in x for x in s["loader"])
    r = cli("inspect", files["src"], "--json")
    assert json.loads(r.stdout)["loader"] == []
