"""Presets are data; every preset must resolve every tensor of its models' real layouts."""
import json

import pytest

from quant import arch, presets

CASES = [(p, a) for p in presets.available() for a in presets.load(p).archs]


@pytest.mark.parametrize("preset,arch_name", CASES)
@pytest.mark.parametrize("target", presets.TARGETS)
def test_preset_resolves_every_tensor(preset, arch_name, target):
    tensors = [(n, "BF16", s) for n, s in arch.get(arch_name).tensors()]
    plan = presets.plan(presets.load(preset), target, tensors)
    assert len(plan.decisions) == len(tensors)
    for d in plan.decisions:
        if d.action != "keep":
            assert len(d.shape) == 2 and d.name.endswith(".weight"), d
            assert not any(s in d.name for s in ("norm", "modulation", "embedding", "img_in", "txt_in",
                                                 "patch", "head.", "final_layer", "proj_out")), d
        assert d.action in _allowed(target), d


def _allowed(target: str) -> set[str]:
    """What a layer of a ``target`` file may become: kept, the format's own kernel, its 4-bit sensitive-layer
    format (nvfp4 -> fp8, w4a4/w4a8 -> int8_convrot) and the fallbacks for shapes a format cannot hold."""
    from quant import formats
    f = formats.get(target)
    out = {"keep", f.kernel}
    if f.four_bit:
        out |= {f.sensitive_actions.get("fp8", "fp8")}
    todo = list(out - {"keep"})
    while todo:
        lf = f.for_action(todo.pop())
        if lf.fallback_action and lf.fallback_action not in out:
            out.add(lf.fallback_action)
            todo.append(lf.fallback_action)
    return out


def test_wan5b_fp8_matches_kj_layer_set():
    t = [(n, "F32", s) for n, s in arch.ARCHS["wan22-ti2v-5b"].tensors()]
    plan = presets.plan(presets.load("wan22-ti2v-5b"), "fp8-legacy", t)
    q = {d.layer for d in plan.quantized()}
    assert len(q) == 300
    assert q == {f"blocks.{i}.{a}.{x}" for i in range(30) for a in ("self_attn", "cross_attn") for x in "qkvo"} | \
               {f"blocks.{i}.ffn.{j}" for i in range(30) for j in (0, 2)}


def test_flux2_dev_nvfp4_matches_bfl_layer_set():
    t = [(n, "BF16", s) for n, s in arch.ARCHS["flux2-dev"].tensors()]
    plan = presets.plan(presets.load("flux"), "nvfp4", t)
    assert plan.by_action() == {"keep": 155, "nvfp4": 144}
    assert not any("txt_attn" in d.name for d in plan.quantized())


def test_qwen_keeps_first_img_mod_and_edges_fp8_under_nvfp4():
    t = [(n, "BF16", s) for n, s in arch.ARCHS["qwen-image"].tensors()]
    plan = presets.plan(presets.load("qwen-image"), "nvfp4", t)
    d = {x.name: x.action for x in plan.decisions}
    assert d["transformer_blocks.0.img_mod.1.weight"] == "keep"
    assert d["transformer_blocks.0.txt_mod.1.weight"] == "fp8"
    assert d["transformer_blocks.59.attn.to_q.weight"] == "fp8"
    assert d["transformer_blocks.30.attn.to_q.weight"] == "nvfp4"
    assert d["transformer_blocks.30.attn.to_v.weight"] == "fp8"
    assert d["img_in.weight"] == d["txt_in.weight"] == d["proj_out.weight"] == "keep"


def test_auto_preset_detection():
    def pick(a):
        t = arch.get(a).tensors()
        return presets.auto_preset([n for n, _ in t], dict(t))
    assert pick("wan22-ti2v-5b") == "wan22-ti2v-5b"
    assert pick("wan22-i2v-a14b") == "wan22-a14b"
    assert pick("qwen-image") == "qwen-image"
    assert pick("flux2-dev") == "flux"


def test_plan_cli_table_and_json(cli, thin_wan5b):
    r = cli("plan", thin_wan5b, "--format", "nvfp4")
    assert r.returncode == 0, r.stderr
    assert "preset wan22-ti2v-5b -> nvfp4" in r.stdout and "blocks.0.ffn.2.weight" in r.stdout
    r = cli("plan", thin_wan5b, "--json", "--format", "fp8")
    data = json.loads(r.stdout)
    assert data["counts"] == {"keep": 49, "fp8": 20}


def test_legacy_for_old_comfy_scales_every_linear(cli, thin_wan5b):
    t = [(n, "BF16", s) for n, s in arch.get("wan22-ti2v-5b-thin").tensors()]
    new = presets.plan(presets.load("wan22-ti2v-5b"), "fp8-legacy", t)
    old = presets.plan(presets.load("wan22-ti2v-5b"), "fp8-legacy", t, comfy_version="0.3.75")
    gained = {d.name for d in old.quantized()} - {d.name for d in new.quantized()}
    assert gained == {"text_embedding.0.weight", "text_embedding.2.weight", "time_embedding.0.weight",
                      "time_embedding.2.weight", "time_projection.1.weight", "head.head.weight"}
    # other formats and new ComfyUI are unaffected; the conv and modulation never become fp8
    assert presets.plan(presets.load("wan22-ti2v-5b"), "fp8", t, comfy_version="0.3.75").by_action() == new.by_action()
    assert {d.name: d.action for d in old.decisions}["patch_embedding.weight"] == "keep"
    r = cli("plan", thin_wan5b, "--format", "fp8-legacy", "--comfy-version", "0.3.75", "--json")
    assert json.loads(r.stdout)["counts"] == {"keep": 43, "fp8": 26}
    r = cli("plan", thin_wan5b, "--format", "fp8-legacy", "--comfy-version", "banana")
    assert r.returncode == 2 and "not a version" in r.stderr
