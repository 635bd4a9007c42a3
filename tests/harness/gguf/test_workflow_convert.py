"""`quantgate workflow convert / rollback` on UI- and API-format workflows written here, and a converted
API workflow rendered by the real embedded ComfyUI server."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests._inproc import cli_runner


@pytest.fixture
def cli(capsys):
    return cli_runner(capsys)

# A UI-format workflow as the ComfyUI frontend saves it (indent 2), with ComfyUI-GGUF loaders:
# WAN 2.1 T2V Q8_0 unet + umt5 Q5_K_M text encoder, plus a Flux-style dual clip loader not wired up.
UI_WF = {
    "id": "6b4b6c1e-0a5e-4a4f-9a57-3d2f3c2b1a00", "revision": 0, "last_node_id": 9, "last_link_id": 8,
    "nodes": [
        {"id": 3, "type": "UnetLoaderGGUF", "pos": [10, 20], "size": [315, 82], "flags": {}, "order": 0,
         "mode": 0, "inputs": [],
         "outputs": [{"name": "MODEL", "type": "MODEL", "links": [1]},
                     {"name": "filename", "type": "STRING", "links": None},
                     {"name": "sha256", "type": "STRING", "links": None}],
         "title": "Unet Loader (GGUF)",
         "properties": {"Node name for S&R": "UnetLoaderGGUF", "cnr_id": "comfyui-gguf", "ver": "1.0"},
         "widgets_values": ["wan2.1-t2v-14b-Q8_0.gguf"]},
        {"id": 4, "type": "CLIPLoaderGGUF", "pos": [10, 150], "size": [315, 82], "flags": {}, "order": 1,
         "mode": 0, "inputs": [], "outputs": [{"name": "CLIP", "type": "CLIP", "links": [2, 3]}],
         "properties": {"Node name for S&R": "CLIPLoaderGGUF"},
         "widgets_values": ["umt5-xxl-encoder-Q5_K_M.gguf", "wan"]},
        {"id": 5, "type": "DualCLIPLoaderGGUF", "pos": [10, 300], "size": [315, 106], "flags": {}, "order": 2,
         "mode": 4, "inputs": [], "outputs": [{"name": "CLIP", "type": "CLIP", "links": None}],
         "properties": {"Node name for S&R": "DualCLIPLoaderGGUF"},
         "widgets_values": ["clip_l.safetensors", "t5-v1_1-xxl-encoder-Q8_0.gguf", "flux"]},
        {"id": 6, "type": "CLIPTextEncode", "pos": [400, 100], "size": [400, 200], "flags": {}, "order": 3,
         "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": 2}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}],
         "properties": {"Node name for S&R": "CLIPTextEncode"}, "widgets_values": ["a fox in the snow, é"]},
        {"id": 7, "type": "CLIPTextEncode", "pos": [400, 350], "size": [400, 200], "flags": {}, "order": 4,
         "mode": 0, "inputs": [{"name": "clip", "type": "CLIP", "link": 3}],
         "outputs": [{"name": "CONDITIONING", "type": "CONDITIONING", "links": [5]}],
         "properties": {"Node name for S&R": "CLIPTextEncode"}, "widgets_values": ["blurry"]},
        {"id": 8, "type": "KSampler", "pos": [850, 100], "size": [315, 262], "flags": {}, "order": 5, "mode": 0,
         "inputs": [{"name": "model", "type": "MODEL", "link": 1},
                    {"name": "positive", "type": "CONDITIONING", "link": 4},
                    {"name": "negative", "type": "CONDITIONING", "link": 5},
                    {"name": "latent_image", "type": "LATENT", "link": None}],
         "outputs": [{"name": "LATENT", "type": "LATENT", "links": []}],
         "properties": {"Node name for S&R": "KSampler"},
         "widgets_values": [42, "randomize", 20, 6.0, "uni_pc", "simple", 1.0]},
    ],
    "links": [[1, 3, 0, 8, 0, "MODEL"], [2, 4, 0, 6, 0, "CLIP"], [3, 4, 0, 7, 0, "CLIP"],
              [4, 6, 0, 8, 1, "CONDITIONING"], [5, 7, 0, 8, 2, "CONDITIONING"]],
    "groups": [], "config": {}, "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4,
}

API_WF = {
    "3": {"class_type": "UnetLoaderGGUFAdvanced", "_meta": {"title": "Unet Loader (GGUF/Advanced)"},
          "inputs": {"unet_name": "wan/wan2.1-t2v-14b-Q8_0.gguf", "dequant_dtype": "default",
                     "patch_dtype": "default", "patch_on_device": False}},
    "4": {"class_type": "CLIPLoaderGGUF", "_meta": {"title": "my text encoder"},
          "inputs": {"clip_name": "umt5-xxl-encoder-Q5_K_M.gguf", "type": "wan"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["4", 0]}},
    "8": {"class_type": "KSampler", "inputs": {"model": ["3", 0], "positive": ["6", 0], "negative": ["6", 0],
                                               "seed": 1, "steps": 4, "cfg": 1.0, "sampler_name": "euler",
                                               "scheduler": "simple", "denoise": 1.0, "latent_image": ["9", 0]}},
    "9": {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 64, "height": 64, "length": 1, "batch_size": 1}},
}
MAPS = ["--map", "wan2.1-t2v-14b-Q8_0.gguf=wan2.1_t2v_14B_fp8_scaled.safetensors",
        "--map", "umt5-xxl-encoder-Q5_K_M.gguf=umt5_xxl_fp8_e4m3fn_scaled.safetensors",
        "--map", "t5-v1_1-xxl-encoder-Q8_0.gguf=t5xxl_fp8_e4m3fn_scaled.safetensors"]


def _write(p: Path, obj, indent=2) -> bytes:
    data = (json.dumps(obj, indent=indent, ensure_ascii=False) + "\n").encode()
    p.write_bytes(data)
    return data


def _tree(d: Path) -> dict:
    return {str(f.relative_to(d)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.rglob("*")) if f.is_file()}


def test_ui_and_api_convert_then_rollback_byte_exact(tmp_path, cli):
    ui = tmp_path / "wan_t2v_gguf.json"
    api = tmp_path / "api" / "wan_api.json"
    api.parent.mkdir()
    ui_bytes = _write(ui, UI_WF)
    api_bytes = _write(api, API_WF, indent=None)
    r = cli("workflow", "convert", tmp_path, *MAPS)
    assert r.returncode == 0, r.stderr
    assert "2 of 2 workflow(s) converted" in r.stderr

    new = json.loads(ui.read_text())
    by_id = {n["id"]: n for n in new["nodes"]}
    assert by_id[3]["type"] == "UNETLoader"
    assert by_id[3]["widgets_values"] == ["wan2.1_t2v_14B_fp8_scaled.safetensors", "default"]
    assert by_id[3]["outputs"] == [{"name": "MODEL", "type": "MODEL", "links": [1]}]
    assert by_id[3]["properties"]["Node name for S&R"] == "UNETLoader"
    assert by_id[3]["title"] == "Load Diffusion Model"
    assert by_id[4]["type"] == "CLIPLoader"
    assert by_id[4]["widgets_values"] == ["umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan", "default"]
    assert by_id[5]["type"] == "DualCLIPLoader" and by_id[5]["mode"] == 4
    assert by_id[5]["widgets_values"] == ["clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors", "flux", "default"]
    # links, ids, other nodes and top-level fields are untouched
    assert new["links"] == UI_WF["links"]
    assert [n["id"] for n in new["nodes"]] == [n["id"] for n in UI_WF["nodes"]]
    for nid in (6, 7, 8):
        assert by_id[nid] == next(n for n in UI_WF["nodes"] if n["id"] == nid)
    assert {k: v for k, v in new.items() if k != "nodes"} == {k: v for k, v in UI_WF.items() if k != "nodes"}
    assert ui.read_text().startswith('{\n  "id"')             # the file's own indentation is kept

    napi = json.loads(api.read_text())
    assert napi["3"] == {"class_type": "UNETLoader", "_meta": {"title": "Load Diffusion Model"},
                         "inputs": {"unet_name": "wan/wan2.1_t2v_14B_fp8_scaled.safetensors", "weight_dtype": "default"}}
    assert napi["4"] == {"class_type": "CLIPLoader", "_meta": {"title": "my text encoder"},
                         "inputs": {"clip_name": "umt5_xxl_fp8_e4m3fn_scaled.safetensors", "type": "wan"}}
    assert {k: napi[k] for k in ("6", "8", "9")} == {k: API_WF[k] for k in ("6", "8", "9")}

    assert (tmp_path / "wan_t2v_gguf.json.quantgate-backup").read_bytes() == ui_bytes
    assert (api.parent / "wan_api.json.quantgate-backup").read_bytes() == api_bytes
    # converting again is refused while a backup exists, and changes nothing
    before = _tree(tmp_path)
    r2 = cli("workflow", "convert", ui, "--map", "wan2.1_t2v_14B_fp8_scaled.safetensors=x.safetensors")
    assert r2.returncode == 2 and "rollback" in r2.stderr and len(r2.stderr.strip().splitlines()) == 1
    assert _tree(tmp_path) == before

    r3 = cli("workflow", "rollback", tmp_path)
    assert r3.returncode == 0, r3.stderr
    assert ui.read_bytes() == ui_bytes and api.read_bytes() == api_bytes
    assert not list(tmp_path.rglob("*.quantgate-backup"))


def test_dry_run_prints_diff_and_writes_nothing(tmp_path, cli):
    ui = tmp_path / "wf.json"
    _write(ui, UI_WF)
    before = _tree(tmp_path)
    r = cli("workflow", "convert", ui, *MAPS, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("--- a/wf.json\n+++ b/wf.json\n")
    assert '-      "type": "UnetLoaderGGUF",' in r.stdout and '+      "type": "UNETLoader",' in r.stdout
    assert '+        "wan2.1_t2v_14B_fp8_scaled.safetensors",' in r.stdout
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("case", ["malformed-json", "not-a-workflow", "gguf-unmapped", "linked-sha256",
                                  "bad-widgets", "missing"])
def test_refused_changes_nothing(tmp_path, case, cli):
    good = tmp_path / "a_good.json"
    _write(good, UI_WF)
    bad = tmp_path / "b_bad.json"
    if case == "malformed-json":
        bad.write_text('{"nodes": [,]}')
    elif case == "not-a-workflow":
        _write(bad, {"settings": {"theme": "dark"}})
    elif case == "gguf-unmapped":
        wf = json.loads(json.dumps(API_WF))
        wf["4"]["inputs"]["clip_name"] = "umt5-xxl-encoder-Q4_K_S.gguf"
        _write(bad, wf)
    elif case == "linked-sha256":
        wf = json.loads(json.dumps(UI_WF))
        wf["nodes"][0]["outputs"][2]["links"] = [9]
        _write(bad, wf)
    elif case == "bad-widgets":
        wf = json.loads(json.dumps(UI_WF))
        wf["nodes"][1]["widgets_values"] = ["umt5-xxl-encoder-Q5_K_M.gguf"]
        _write(bad, wf)
    target = tmp_path / "nope.json" if case == "missing" else tmp_path
    before = _tree(tmp_path)
    r = cli("workflow", "convert", target, *MAPS, subprocess=case == "malformed-json")
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert ("nope.json" if case == "missing" else "b_bad.json") in lines[0]
    assert _tree(tmp_path) == before


def test_rollback_without_backup_and_bad_map(tmp_path, cli):
    wf = tmp_path / "wf.json"
    _write(wf, API_WF)
    r = cli("workflow", "rollback", wf)
    assert r.returncode == 2 and "no backup" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("workflow", "convert", wf, "--map", "justaname")
    assert r.returncode == 2 and "OLD=NEW" in r.stderr


def test_converted_api_workflow_renders_on_the_embedded_server(tmp_path, comfy_session, thin_source, cli):
    """A GGUF-loader API workflow, converted with --map to an fp8 file, is accepted by /prompt and renders
    exactly what the same workflow written for UNETLoader renders."""
    from harness.render.gate import load_policy
    from harness.render.workflow import DEFAULT_TEMPLATE, Workflow, load
    from quant.convert import convert
    fp8 = tmp_path / "wan21_thin_fp8_scaled.safetensors"
    convert(thin_source, fp8, "fp8-legacy", force=True, comfy_version=comfy_session.version)
    name = comfy_session.model(fp8)
    plan = load_policy()["plan"]
    settings = {k: plan[k] for k in ("steps", "cfg", "sampler", "scheduler", "cond_seed", "neg_seed")}
    settings["vae"] = comfy_session.vae()
    base = Workflow(load(DEFAULT_TEMPLATE)).build(name, 7, 64, 64, settings, prefix="qgwf")
    assert base["1"]["class_type"] == "UNETLoader"
    gguf = json.loads(json.dumps(base))
    gguf["1"] = {"class_type": "UnetLoaderGGUF", "inputs": {"unet_name": "wan2.1-t2v-thin-Q8_0.gguf"},
                 "_meta": {"title": "Unet Loader (GGUF)"}}
    wf_path = tmp_path / "wf_api.json"
    _write(wf_path, gguf)
    r = cli("workflow", "convert", wf_path, "--map", f"wan2.1-t2v-thin-Q8_0.gguf={name}")
    assert r.returncode == 0, r.stderr
    converted = json.loads(wf_path.read_text())
    assert converted["1"]["class_type"] == "UNETLoader"
    out = comfy_session.client.run(converted, timeout=300)
    ref = comfy_session.client.run(base, timeout=300)
    assert len(out.images) == 1 and out.images[0][1].shape == (64, 64, 3)
    assert out.images[0][1].std() > 1.0                    # a picture, not a flat fill
    assert (out.images[0][1] == ref.images[0][1]).all()   # same pixels as the UNETLoader workflow
    assert not out.load_warnings
