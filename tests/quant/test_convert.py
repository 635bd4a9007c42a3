"""End-to-end conversion of a thin real-layout WAN 2.2 5B into all three formats, decoded by an
independent reader (the safetensors library + comfy-kitchen's eager dequantizers)."""
import hashlib
import json

import comfy_kitchen as ck
import pytest
import torch
from safetensors import safe_open

from quant.kernels import nvfp4
from quant.convert import convert

KJ_LAYERS = [f"blocks.{i}.{a}.{x}" for i in range(2) for a in ("self_attn", "cross_attn") for x in "qkvo"] + \
            [f"blocks.{i}.ffn.{j}" for i in range(2) for j in (0, 2)]


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


@pytest.fixture(scope="module")
def src(thin_wan5b):
    t, _ = _read(thin_wan5b)
    return t


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_fp8_legacy_is_the_kj_recipe(thin_wan5b, src, tmp_path):
    before = _sha(thin_wan5b)
    out = tmp_path / "legacy.safetensors"
    s = convert(thin_wan5b, out, "fp8-legacy")
    assert _sha(thin_wan5b) == before                      # input untouched
    t, meta = _read(out)
    assert t["scaled_fp8"].dtype == torch.float8_e4m3fn and list(t["scaled_fp8"].shape) == [2]
    assert meta.get("format") == "pt" and meta.get("model_type") == "TI2V"   # KJ: "TI2V-5B" at full width
    assert s.layers == {"fp8": 20, "keep": 49}
    for L in KJ_LAYERS:
        w, sc = t[f"{L}.weight"], t[f"{L}.scale_weight"]
        assert w.dtype == torch.float8_e4m3fn and sc.dtype == torch.float32 and list(sc.shape) == [1]
        with ck.use_backend("eager"):
            d = ck.dequantize_per_tensor_fp8(w, sc.reshape(()), output_type=torch.float32)
        assert _rel(d, src[f"{L}.weight"]) < 0.05
        assert f"{L}.comfy_quant" not in t
    # everything else is the source, bit for bit, in source precision
    for k, v in src.items():
        if k[: -len(".weight")] not in KJ_LAYERS:
            assert t[k].dtype == v.dtype and torch.equal(t[k], v), k


def test_fp8_comfy_quant_has_both_carriers_and_weight_only_policy(thin_wan5b, src, tmp_path):
    out = tmp_path / "mixed.safetensors"
    convert(thin_wan5b, out, "fp8")
    t, meta = _read(out)
    layers = json.loads(meta["_quantization_metadata"])
    assert layers["format_version"] == "1.0"
    assert set(layers["layers"]) == set(KJ_LAYERS)
    for L in KJ_LAYERS:
        conf = json.loads(bytes(t[f"{L}.comfy_quant"].numpy()))
        assert conf == layers["layers"][L] == {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}
        assert t[f"{L}.weight_scale"].shape == () and t[f"{L}.weight_scale"].dtype == torch.float32
        with ck.use_backend("eager"):
            d = ck.dequantize_per_tensor_fp8(t[f"{L}.weight"], t[f"{L}.weight_scale"], output_type=torch.float32)
        assert _rel(d, src[f"{L}.weight"]) < 0.05
    assert "scaled_fp8" not in t


def test_nvfp4_bytes_identical_to_comfy_kitchen(thin_wan5b, src, tmp_path):
    out = tmp_path / "nv.safetensors"
    s = convert(thin_wan5b, out, "nvfp4", "wan22-ti2v-5b")
    t, meta = _read(out)
    layers = json.loads(meta["_quantization_metadata"])["layers"]
    nv = [L for L, c in layers.items() if c["format"] == "nvfp4"]
    f8 = [L for L, c in layers.items() if c["format"] == "float8_e4m3fn"]
    assert s.layers == {"nvfp4": 14, "fp8": 6, "keep": 49} and len(nv) == 14
    assert all(L.endswith((".v", ".ffn.2")) for L in f8)
    for L in nv:
        w = src[f"{L}.weight"]
        s2 = t[f"{L}.weight_scale_2"]
        assert s2.shape == () and s2.dtype == torch.float32
        with ck.use_backend("eager"):
            qk, bsk = ck.quantize_nvfp4(w, s2, pad_16x=True)
            d = ck.dequantize_nvfp4(t[f"{L}.weight"], s2, t[f"{L}.weight_scale"], output_type=torch.float32)
        assert torch.equal(t[f"{L}.weight"], qk)
        assert torch.equal(t[f"{L}.weight_scale"].view(torch.uint8), bsk.view(torch.uint8))
        assert t[f"{L}.weight_scale"].shape == nvfp4.scale_shape(*w.shape)
        assert "input_scale" not in {k.split(".")[-1] for k in t if k.startswith(L + ".")}
        assert 0.05 < _rel(d[: w.shape[0], : w.shape[1]], w) < 0.15
        assert json.loads(bytes(t[f"{L}.comfy_quant"].numpy())) == {"format": "nvfp4"}


def test_shards_and_index_give_the_same_file(tmp_path, thin_wan5b):
    from harness.fixtures.synth import make_sharded
    d = make_sharded("wan22-ti2v-5b-thin", tmp_path / "shards", n_shards=3, seed=1)
    a = convert(d, tmp_path / "a.safetensors", "fp8")
    b = convert(d / "diffusion_pytorch_model.safetensors.index.json", tmp_path / "b.safetensors", "fp8")
    c = convert(thin_wan5b, tmp_path / "c.safetensors", "fp8")
    ta, _ = _read(tmp_path / "a.safetensors")
    tc, _ = _read(tmp_path / "c.safetensors")
    assert a.tensors_out == b.tensors_out == c.tensors_out
    assert _sha(tmp_path / "a.safetensors") == _sha(tmp_path / "b.safetensors")
    assert ta.keys() == tc.keys() and all(torch.equal(ta[k].view(torch.uint8) if ta[k].dtype == torch.float8_e4m3fn else ta[k],
                                                      tc[k].view(torch.uint8) if tc[k].dtype == torch.float8_e4m3fn else tc[k])
                                          for k in ta)


def test_input_scales_written_and_policy_follows(thin_wan5b, tmp_path):
    sc = tmp_path / "scales.json"
    sc.write_text(json.dumps({"layers": {"blocks.0.ffn.0": 448.0 * 3, "blocks.0.self_attn.q": 2688.0}}))
    out = tmp_path / "cal.safetensors"
    convert(thin_wan5b, out, "nvfp4", input_scales=str(sc))
    t, meta = _read(out)
    assert float(t["blocks.0.self_attn.q.input_scale"]) == pytest.approx(1.0)        # nvfp4: amax/2688
    # blocks.0.ffn.0 is nvfp4 too under this preset
    assert float(t["blocks.0.ffn.0.input_scale"]) == pytest.approx(448 * 3 / 2688)
    out8 = tmp_path / "cal8.safetensors"
    convert(thin_wan5b, out8, "fp8", input_scales=str(sc))
    t8, meta8 = _read(out8)
    assert float(t8["blocks.0.ffn.0.input_scale"]) == pytest.approx(3.0)            # fp8: amax/448
    conf = json.loads(meta8["_quantization_metadata"])["layers"]
    assert conf["blocks.0.ffn.0"] == {"format": "float8_e4m3fn"}                    # calibrated: fp8 matmul ok
    assert conf["blocks.1.ffn.0"]["full_precision_matrix_mult"] is True


def test_existing_output_needs_force(thin_wan5b, tmp_path):
    from harness.commands import message
    from quant.errors import OptionError
    out = tmp_path / "x.safetensors"
    out.write_bytes(b"keep me")
    with pytest.raises(OptionError, match="pass force to overwrite") as e:     # the core names its option
        convert(thin_wan5b, out, "fp8")
    assert message(e.value).endswith("output exists; pass --force to overwrite it")   # the CLI its flag
    assert out.read_bytes() == b"keep me"
    convert(thin_wan5b, out, "fp8", force=True)
    assert out.stat().st_size > 1000


def test_output_may_not_overwrite_input(thin_wan5b):
    from quant.errors import UsageError
    with pytest.raises(UsageError, match="overwrite the input"):
        convert(thin_wan5b, thin_wan5b, "fp8", force=True)


def test_default_output_name(tmp_path):
    from quant.convert import default_output
    from pathlib import Path
    assert default_output(Path("/m/wan2.2_ti2v_5B_fp16.safetensors"), "fp8-legacy").name == "wan2.2_ti2v_5B_fp8_e4m3fn_scaled.safetensors"
    assert default_output(Path("/m/qwen_image_bf16.safetensors"), "nvfp4").name == "qwen_image_nvfp4mixed.safetensors"
    shards = tmp_path / "wan_fp32"
    shards.mkdir()
    for src in (shards, shards / "diffusion_pytorch_model.safetensors.index.json"):
        assert default_output(src, "fp8") == tmp_path / "wan_fp8mixed.safetensors"
