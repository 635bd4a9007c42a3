"""quantgate diff: grouped, explained differences; exit 0 same/equivalent, 1 different, 2 unreadable."""
from __future__ import annotations

import json

import pytest
import torch

from harness.fixtures import synth
from harness.cli import main
from harness.verify.layout_diff import diff_paths
from quant.convert import convert
from harness.fixtures.planted import format_defects as P


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    src = synth.make_model("wan22-ti2v-5b-thin", d / "src.safetensors", seed=5)
    f16 = synth.make_model("wan22-ti2v-5b-thin", d / "f16.safetensors", seed=5, dtype=torch.float16)
    out = {"src": src, "f16": f16}
    for fmt in ("fp8-legacy", "fp8", "nvfp4"):
        out[fmt] = d / f"{fmt}.safetensors"
        convert(src, out[fmt], fmt)
    t, m = P.load(out["fp8-legacy"])
    t = {k: (v.float() if v.dtype == torch.bfloat16 else v) for k, v in t.items()}
    out["kj-like"] = P.save(t, {"format": "pt", "model_type": "TI2V-5B"}, d / "kj-like.safetensors")
    shards = synth.make_sharded("wan22-ti2v-5b-thin", d / "shards", n_shards=2, seed=5)
    out["shards"] = shards
    return out


def _run(capsys, *argv):
    rc = main(["diff", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_same_file_and_shards(models, capsys):
    rc, out, _ = _run(capsys, models["fp8"], models["fp8"])
    assert rc == 0 and "same layout" in out
    rc, out, _ = _run(capsys, models["src"], models["shards"])
    assert rc == 0 and "same layout" in out
    rc, out, _ = _run(capsys, models["src"], next(models["shards"].glob("*.index.json")))
    assert rc == 0


def test_legacy_vs_comfy_fp8_equivalent_explained(models, capsys):
    rc, out, _ = _run(capsys, models["fp8"], models["fp8-legacy"])
    assert rc == 0, out
    line = next(x for x in out.splitlines() if "scale_weight" in x)
    assert line.startswith("equivalent") and "20 entries" in line
    assert "scale_weight F32[1] in the reference, weight_scale F32[] here" in line and "ComfyUI >= 0.4.0" in line


def test_format_change_is_a_difference(models, capsys):
    rc, out, _ = _run(capsys, models["nvfp4"], models["fp8"], "--json")
    d = json.loads(out)
    assert rc == 1 and not d["equivalent"]
    g = next(g for g in d["groups"] if "quantized differently" in g["message"])
    assert g["count"] == 14 and "nvfp4" in g["message"]


def test_dtype_difference_grouped(models, capsys):
    rc, out, _ = _run(capsys, models["f16"], models["src"])
    assert rc == 1
    lines = [x for x in out.splitlines() if x.startswith("DIFFERENT")]
    assert len(lines) == 1 and "F16 here, BF16 in the reference" in lines[0]


def test_thin_vs_golden_manifest_structure_only(models, capsys):
    rc, out, _ = _run(capsys, models["f16"], "comfy/wan2.2_ti2v_5B_fp16", "--structure-only")
    assert rc == 0 and "same layout" in out
    rc, out, _ = _run(capsys, models["f16"], "comfy/wan2.2_ti2v_5B_fp16")
    assert rc == 1 and "shape differs" in out
    # KJ recipe: legacy fp8, F32 elsewhere, [2] marker; our kj-like thin file matches it modulo width
    rc, out, _ = _run(capsys, models["kj-like"], "kj/Wan2_2-TI2V-5B_fp8_e4m3fn_scaled_KJ", "--structure-only")
    assert rc == 0, out


def test_missing_layer_and_quantization_difference(models, tmp_path, capsys):
    t, m = P.load(models["fp8"])
    del t["blocks.1.ffn.2.bias"]
    p = P.save(t, m, tmp_path / "x.safetensors")
    d = diff_paths(p, models["fp8"])
    assert d.exit_code == 1
    assert any(g.message == "only in the reference" and g.names == ["blocks.1.ffn.2.bias"] for g in d.groups)


def test_unreadable_exit_2(models, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 3)
    rc, out, err = _run(capsys, bad, models["fp8"])
    assert rc == 2 and len(err.strip().splitlines()) == 1
    rc, out, err = _run(capsys, models["fp8"], "no/such-manifest")
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_verify_with_reference(models):
    from harness.verify import verify
    rep = verify(models["fp8-legacy"], reference=models["fp8"])
    assert rep.passed and "reference.diff" in rep.findings.rules("info")
    rep = verify(models["nvfp4"], reference=models["fp8"])
    assert not rep.passed and "reference.diff" in rep.findings.rules("error")
