"""The real embedded ComfyUI server: API, custom node, determinism, golden renders, errors."""
import json
from pathlib import Path

import numpy as np
import pytest

from harness.comfy.client import parse_load_warnings
from harness.comfy.errors import ExecutionError, PromptRejected
from harness.render import fingerprints as golden, score
from harness.render.workflow import Workflow

SETTINGS = {"steps": 4, "cfg": 1.0, "sampler": "euler", "scheduler": "simple"}


def _wf(session, model_name, seed=5, w=64, h=64):
    s = dict(SETTINGS, vae=session.vae())
    return Workflow.from_arg(None, None).build(model_name, seed, w, h, s, "t")


def test_system_stats_object_info_queue(comfy_session):
    c = comfy_session.client
    stats = c.system_stats()
    assert stats["system"]["comfyui_version"] == "0.3.75" == comfy_session.version
    assert stats["devices"] and stats["devices"][0]["type"] in ("cpu", "cuda")
    info = c.object_info("QGRandomConditioning")["QGRandomConditioning"]
    assert info["output"] == ["CONDITIONING"]
    assert set(info["input"]["required"]) == {"seed", "tokens", "dim", "scale"}
    q = c.queue()
    assert q["queue_running"] == [] and q["queue_pending"] == []
    # the server listens on loopback only
    assert comfy_session.client.url.startswith("http://127.0.0.1:")
    assert "--cache-none" in stats["system"]["argv"]


def test_same_seed_twice_is_pixel_identical_and_seed_matters(comfy_session, thin_source):
    name = comfy_session.model(thin_source)
    progress = []
    a = comfy_session.client.run(_wf(comfy_session, name, seed=5), on_progress=lambda v, m, n: progress.append((v, m)))
    b = comfy_session.client.run(_wf(comfy_session, name, seed=5))
    c = comfy_session.client.run(_wf(comfy_session, name, seed=6))
    ia, ib, ic = a.images[0][1], b.images[0][1], c.images[0][1]
    assert ia.shape == (64, 64, 3) and ia.std() > 5          # a picture, not a flat colour
    assert np.array_equal(ia, ib)
    assert score.ssim(ia, ib) == 1.0
    assert score.ssim(ia, ic) < 0.95
    assert a.load_warnings == [] and "WAN21" in a.log
    assert (4, 4) in progress                              # websocket progress arrived


def test_golden_renders_are_pixel_identical(comfy_session):
    stored = json.loads(golden.GOLDEN.read_text())
    cur = golden.render_golden(comfy_session)
    assert golden.compare(cur, stored) == [], (
        "render path changed; if intended, run: python -m harness.render.fingerprints --update")


def test_execution_error_names_node_and_exception(comfy_session, tmp_path, thin_source):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(thin_source.read_bytes()[: 200_000])
    name = comfy_session.model(bad)
    with pytest.raises(ExecutionError) as ei:
        comfy_session.client.run(_wf(comfy_session, name), timeout=60)
    e = ei.value
    assert e.node_id == "1" and e.node_type == "UNETLoader"
    assert e.exception_type and "UNETLoader" in str(e)


def test_prompt_validation_error_is_clear(comfy_session):
    wf = _wf(comfy_session, "no-such-model.safetensors")
    with pytest.raises(PromptRejected) as ei:
        comfy_session.client.run(wf, timeout=30)
    msg = str(ei.value)
    assert "node 1 (UNETLoader)" in msg and "no-such-model" in msg


def test_parse_load_warnings():
    log = ("model_type FLOW\nunet missing: ['head.head.scale_weight']\n"
           "unet unexpected: ['a.scale_weight', 'b.scale_weight']\nPrompt executed in 0.2 seconds\n")
    assert parse_load_warnings(log) == [{"kind": "missing", "keys": ["head.head.scale_weight"]},
                                        {"kind": "unexpected", "keys": ["a.scale_weight", "b.scale_weight"]}]
    assert parse_load_warnings("all good\n") == []


def test_comfy_setup_is_idempotent(cli):
    r1 = cli("comfy", "setup", timeout=300)
    assert r1.returncode == 0, r1.stderr
    root = r1.stdout.split("ComfyUI:")[1].split()[0]
    assert Path(root, "main.py").is_file() and Path(root, "custom_nodes").is_dir()
    assert not Path(root, "extra_model_paths.yaml").exists()       # horde's yaml would crash main.py
    r2 = cli("comfy", "setup", timeout=120)
    assert r2.returncode == 0 and "preparing" not in r2.stderr     # second run copies nothing
    assert r2.stdout.split("ComfyUI:")[1].split()[0] == root
