"""Golden manifests: generated from templates, reproduce the published byte sizes (layouts.md),
and the committed golden/*.json equal freshly generated ones."""
from __future__ import annotations

import json

import pytest

from harness.verify import manifests as G
from harness.cli import main
from quant.safetensors_io import parse_header_bytes

# published sizes quoted in ../shared/reference/layouts.md (§1.3, §1.4, §2.3, §6)
PUBLISHED = {
    "kj/Wan2_2-TI2V-5B_fp8_e4m3fn_scaled_KJ": 5_277_255_650,
    "comfy/wan2.2_ti2v_5B_fp16": 9_999_658_848,
    "bfl/flux2-dev-nvfp4": 21_035_602_376,
}
# tensor / parameter counts quoted there for the files whose byte count is not
COUNTS = {
    "comfy/wan2.2_t2v_high_noise_14B_fp16": (1095, 14_288_491_584),
    "comfy/wan2.2_i2v_high_noise_14B_fp16": (1095, 14_288_901_184),
    "comfy/wan2.2_ti2v_5B_fp16": (825, 4_999_787_712),
    "comfy/qwen_image_fp8_e4m3fn": (1933, 20_430_401_088),
    "comfy/flux-2-klein-base-4b": (149, None),
    "kj/Wan2_2-TI2V-5B_fp8_e4m3fn_scaled_KJ": (1126, None),
    "bfl/flux2-dev-nvfp4": (731, None),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_sizes_reproduced(name):
    m = G.generate(G.BY_NAME[name])
    assert m["file_bytes"] == PUBLISHED[name] == m["published_bytes"]


@pytest.mark.parametrize("name", list(COUNTS))
def test_counts(name):
    m = G.generate(G.BY_NAME[name])
    n, params = COUNTS[name]
    assert m["tensor_count"] == n
    if params:
        assert m["params_or_elements"] == params


def test_required_manifests_present():
    need = {"kj/Wan2_2-TI2V-5B_fp8_e4m3fn_scaled_KJ", "comfy/wan2.2_ti2v_5B_fp16",
            "comfy/wan2.2_t2v_high_noise_14B_fp16", "bfl/flux2-dev-nvfp4", "comfy/flux-2-klein-base-4b",
            "comfy/qwen_image_fp8_e4m3fn"}
    assert need <= set(G.names())


@pytest.mark.parametrize("name", G.names())
def test_committed_equals_generated(name):
    p = G.path_of(name)
    assert p.is_file(), f"run `quantgate manifest regen` ({p} missing)"
    assert p.read_text() == G.dumps(G.generate(G.BY_NAME[name])), "stale manifest: run `quantgate manifest regen`"


def test_regen_check_command(capsys):
    assert main(["manifest", "regen", "--check"]) == 0


@pytest.mark.parametrize("name", ["bfl/flux2-dev-nvfp4", "kj/Wan2_2-TI2V-5B_fp8_e4m3fn_scaled_KJ"])
def test_serialized_header_is_a_valid_safetensors_header(name):
    """The header we size is one our strict parser accepts for a file of exactly file_bytes."""
    r = G.BY_NAME[name]
    tensors, meta = G._tensor_list(r)
    raw, placed = G.serialize_header(tensors, meta)
    m = G.generate(r)
    h = parse_header_bytes("x", raw, m["file_bytes"], len(raw))
    assert len(h.tensors) == m["tensor_count"]
    # file order: dtype descending, then name
    order = [G.DTYPE_ORDER.index(t[1]) for t in placed]
    assert order == sorted(order, reverse=True)


def test_kj_recipe_details():
    m = G.load("kj/Wan2_2-TI2V-5B_fp8_e4m3fn_scaled_KJ")
    t = m["tensors"]
    assert t["scaled_fp8"] == {"dtype": "F8_E4M3", "shape": [2], "data_offsets": t["scaled_fp8"]["data_offsets"]}
    assert t["blocks.0.ffn.2.scale_weight"]["shape"] == [1]
    assert t["blocks.0.ffn.2.weight"]["dtype"] == "F8_E4M3" and t["blocks.0.ffn.2.bias"]["dtype"] == "F32"
    assert m["quantized_layers"] == 300 and m["metadata"] == {"format": "pt", "model_type": "TI2V-5B"}


def test_flux2_nvfp4_details():
    m = G.load("bfl/flux2-dev-nvfp4")
    t = m["tensors"]
    assert t["single_blocks.0.linear2.weight"]["shape"] == [6144, 12288]
    assert t["single_blocks.0.linear2.weight_scale"] == {**t["single_blocks.0.linear2.weight_scale"],
                                                        "dtype": "F8_E4M3", "shape": [6144, 1536]}
    assert t["double_blocks.0.txt_attn.qkv.weight"]["dtype"] == "BF16"
    q = json.loads(m["metadata"]["_quantization_metadata"])
    assert len(q["layers"]) == 144 and q["format_version"] == "1.0"


def test_manifest_cli(capsys):
    assert main(["manifest", "show", "bfl/flux2-dev-nvfp4", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["file_bytes"] == 21_035_602_376 and s["tensors"] == 731
    assert main(["manifest", "list"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in G.names())
    assert main(["manifest", "show", "no/such"]) == 2
    assert "unknown manifest" in capsys.readouterr().err


def test_golden_files_small():
    total = sum(G.path_of(n).stat().st_size for n in G.names())
    assert total < 2_000_000
