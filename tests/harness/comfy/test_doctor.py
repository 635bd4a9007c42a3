"""`quantgate doctor` against the real embedded ComfyUI server (the session's shared one)."""
from __future__ import annotations

import json
import os

import pytest
import torch

from tests._inproc import cli_runner


@pytest.fixture
def cli(capsys):
    return cli_runner(capsys)


@pytest.fixture
def install(tmp_path, comfy_session, thin_source):
    """A models dir, a workflows dir and a ComfyUI root (the embedded server's own files, symlinked) with
    ComfyUI-GGUF installed but disabled the way ComfyUI-Manager disables it."""
    from quant.convert import convert
    from quant.safetensors_io import save_file
    models = tmp_path / "models"
    (models / "diffusion_models").mkdir(parents=True)
    (models / "vae").mkdir()
    convert(thin_source, models / "diffusion_models" / "wan21_thin_fp8_e4m3fn_scaled.safetensors", "fp8-legacy",
            force=True, comfy_version=comfy_session.version)
    # the fp32 source under an fp8 name: what the header says is not what the name claims
    os.symlink(thin_source, models / "diffusion_models" / "wan21_thin_fp8_e4m3fn.safetensors")
    save_file({"decoder.conv1.weight": torch.zeros(8, 4, 3, 3, 3, dtype=torch.bfloat16)},
              models / "vae" / "tiny_vae_bf16.safetensors")
    (models / "text_encoders").mkdir()
    (models / "text_encoders" / "broken_fp16.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    wfs = tmp_path / "workflows"
    wfs.mkdir()
    (wfs / "ui.json").write_text(json.dumps({"nodes": [
        {"id": 1, "type": "UNETLoader", "widgets_values": ["wan21_thin_fp8_e4m3fn_scaled.safetensors", "default"]},
        {"id": 2, "type": "UnetLoaderGGUF", "widgets_values": ["wan21_thin_fp8_e4m3fn.safetensors"]},
        {"id": 3, "type": "VAELoader", "widgets_values": ["tiny_vae_bf16.safetensors"]},
        {"id": 4, "type": "CLIPLoaderGGUF", "mode": 4, "widgets_values": ["bypassed-Q4_K_M.gguf", "wan"]},
    ], "links": []}, indent=2))
    (wfs / "api.json").write_text(json.dumps({
        "5": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5-xxl-encoder-Q5_K_M.gguf", "type": "wan"}},
        "6": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": "broken_fp16.safetensors",
                                                          "clip_name2": "wan21_thin_fp8_e4m3fn_scaled.safetensors",
                                                          "type": "flux"}}}))
    root = tmp_path / "comfyui"
    root.mkdir()
    real = comfy_session.server.root
    for n in ("main.py", "comfy", "comfyui_version.py"):
        os.symlink(real / n, root / n)
    (root / "custom_nodes" / "ComfyUI-GGUF.disabled").mkdir(parents=True)
    (root / "custom_nodes" / "ComfyUI-GGUF.disabled" / "__init__.py").write_text("")
    return {"models": models, "workflows": wfs, "root": root}


def test_doctor_against_the_embedded_server(install, comfy_session, cli):
    url = comfy_session.client.url
    before = {p: p.stat().st_mtime_ns for p in install["workflows"].iterdir()}
    r = cli("doctor", "--comfy-url", url, "--comfy-root", install["root"], "--models", install["models"],
                "--workflows", install["workflows"], "--json")
    assert r.returncode == 1, r.stderr
    facts = json.loads(r.stdout)
    stats = comfy_session.client.system_stats()
    assert facts["comfyui"]["version"] == stats["system"]["comfyui_version"] == comfy_session.version == "0.3.75"
    assert facts["comfyui"]["pytorch"] == stats["system"]["pytorch_version"]
    # formats this version loads: from the format facts, not hard-coded here
    from harness.comfy.doctor import formats
    from quant.formats import QUANT_ALGOS_SINCE, version_lt
    for name, f in formats().items():
        assert facts["formats"][name]["loads"] == (not version_lt("0.3.75", f.min_comfy))
    assert facts["formats"]["fp8-legacy"]["loads"] and not facts["formats"]["nvfp4"]["loads"]
    assert facts["comfyui"]["quant_algos"] == [a for a, v in QUANT_ALGOS_SINCE.items() if not version_lt("0.3.75", v)]
    assert facts["comfyui"]["quant_algos"] == ["float8_e4m3fn"]
    dev = stats["devices"][0]
    assert facts["gpu"]["name"] == dev["name"] and facts["gpu"]["vram_total"] == dev["vram_total"]
    if dev["type"] == "cpu":
        assert facts["gpu"]["fp8"] == "emulated" and facts["gpu"]["nvfp4"] == "emulated"
    # custom nodes: quantgate's node is loaded by the server; ComfyUI-GGUF sits disabled in custom_nodes
    assert facts["custom_nodes"]["quantgate_nodes"]["state"] == "loaded"
    assert facts["custom_nodes"]["quantgate_nodes"]["nodes"] >= 1
    assert facts["custom_nodes"]["ComfyUI-GGUF"]["state"] == "disabled"
    assert facts["custom_nodes_gguf"] == "disabled"
    rows = {(c["area"], c["item"]): c for c in facts["checks"]}
    assert rows[("models", "wan21_thin_fp8_e4m3fn_scaled.safetensors")]["status"] == "ok"
    assert "fp8-legacy" in rows[("models", "wan21_thin_fp8_e4m3fn_scaled.safetensors")]["detail"]
    bad = rows[("models", "wan21_thin_fp8_e4m3fn.safetensors")]
    assert bad["status"] == "fail" and "named fp8 but the header says fp32" in bad["detail"]
    assert rows[("models", "tiny_vae_bf16.safetensors")]["status"] == "ok"
    assert rows[("models", "umt5-xxl-encoder-Q5_K_M.gguf")]["status"] == "fail"
    assert "missing" in rows[("models", "umt5-xxl-encoder-Q5_K_M.gguf")]["detail"]
    assert rows[("models", "broken_fp16.safetensors")]["status"] == "fail"
    assert ("models", "bypassed-Q4_K_M.gguf") not in rows             # a bypassed node loads nothing
    assert rows[("disk", "free space")]["status"] in ("ok", "warn")
    # the UI workflow's UnetLoaderGGUF does not exist on this server (ComfyUI-GGUF disabled): it cannot run
    w = rows[("workflows", "ui.json")]
    assert w["status"] == "fail" and "lacks: UnetLoaderGGUF (ComfyUI-GGUF disabled" in w["detail"]
    assert rows[("workflows", "api.json")]["status"] == "ok"
    used = {m["name"]: m["used_by"] for m in facts["models"]}
    assert sorted(used["wan21_thin_fp8_e4m3fn_scaled.safetensors"]) == ["api.json#6", "ui.json#1"]
    # the table: one line per check, no colour codes when stdout is not a terminal
    t = cli("doctor", "--comfy-url", url, "--models", install["models"], "--workflows", install["workflows"])
    assert t.returncode == 1
    assert "\033[" not in t.stdout
    assert "ComfyUI 0.3.75 (/system_stats)" in t.stdout and t.stdout.strip().splitlines()[-1].startswith("FAIL: 4 failure")
    assert {p: p.stat().st_mtime_ns for p in install["workflows"].iterdir()} == before


def test_doctor_ok_install_exits_0(install, comfy_session, cli):
    wf = install["workflows"]
    for f in wf.iterdir():
        f.unlink()
    (wf / "good.json").write_text(json.dumps({"1": {"class_type": "UNETLoader", "inputs": {
        "unet_name": "wan21_thin_fp8_e4m3fn_scaled.safetensors", "weight_dtype": "default"}}}))
    r = cli("doctor", "--comfy-url", comfy_session.client.url, "--models", install["models"], "--workflows", wf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("OK: 0 failure(s)")


@pytest.mark.parametrize("case", ["unreachable", "malformed-workflow", "no-models-dir", "no-server", "bad-root"])
def test_doctor_bad_input_one_line_exit_2(tmp_path, case, cli):
    wfs = tmp_path / "wf"
    wfs.mkdir()
    args = ["--comfy-url", "http://127.0.0.1:9"]
    if case == "malformed-workflow":
        (wfs / "x.json").write_text('{"nodes": [}')
        args = ["--comfy-root", str(tmp_path), "--workflows", str(wfs)]
        (tmp_path / "main.py").write_text("")
        (tmp_path / "comfy").mkdir()
    elif case == "no-models-dir":
        args += ["--models", str(tmp_path / "nope")]
    elif case == "no-server":
        args = ["--workflows", str(wfs)]
    elif case == "bad-root":
        args = ["--comfy-root", str(tmp_path / "nope")]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    r = cli("doctor", *args, subprocess=case == "unreachable")
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr and not r.stdout
    assert {"unreachable": "cannot reach ComfyUI", "malformed-workflow": "x.json: workflow is not valid JSON",
            "no-models-dir": "nope: --models: not a directory", "no-server": "--comfy-url",
            "bad-root": "not a ComfyUI checkout"}[case] in r.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_name_claims():
    from harness.comfy.doctor import claim_holds, name_claim
    assert name_claim("wan2.2_ti2v_5B_fp8_scaled.safetensors") == "fp8"
    assert name_claim("qwen_image_nvfp4.safetensors") == "nvfp4"
    assert name_claim("umt5_xxl_bf16.safetensors") == "bf16"
    assert name_claim("flux1-dev-Q4_K_M.gguf") == "gguf Q4_K"
    assert name_claim("wan_2.1_vae.safetensors") is None
    assert claim_holds("fp8", {"format": "fp8-legacy", "container": "safetensors"})
    assert not claim_holds("fp8", {"format": "nvfp4+fp8", "container": "safetensors"})
    assert not claim_holds("fp8", {"format": "bf16", "container": "safetensors"})
    assert claim_holds("gguf Q4_K", {"format": "gguf Q4_K", "container": "gguf", "types": ["F32", "Q4_K", "Q6_K"]})
    assert not claim_holds("gguf Q8_0", {"format": "gguf Q4_K", "container": "gguf", "types": ["F32", "Q4_K"]})
