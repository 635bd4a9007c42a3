"""The node pack (nodepack/) installed the way a ComfyUI user installs one: the folder copied to
``custom_nodes/quantgate`` and quantgate's wheel pip-installed into the Python that runs ComfyUI (a venv over that
server's own environment). Then, in the embedded ComfyUI 0.3.75 and the upstream tree (0.33), through the one
client: ``/object_info`` lists the pack's nodes with the models folder's files, the web extension is served, and
a queued QGCheckModel prompt shows PASS for a good file and FAIL naming the layer for a bad one."""
from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACK = ROOT / "nodepack"
LAYER = "blocks.0.self_attn.q"
pytestmark = pytest.mark.slow


def test_pack_follows_the_registry_conventions():
    cfg = tomllib.loads((PACK / "pyproject.toml").read_text())
    proj, comfy = cfg["project"], cfg["tool"]["comfy"]
    import re
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[-_.][A-Za-z0-9]+)*", proj["name"]) and len(proj["name"]) < 100
    assert "comfyui" not in proj["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", proj["version"])
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]
    assert (PACK / comfy["Icon"]).is_file() or comfy["Icon"].startswith("https://")
    assert "quantgate" in proj["dependencies"] and "quantgate" in (PACK / "requirements.txt").read_text().split()
    assert (PACK / "web" / "quantgate_verdict.js").is_file()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    from harness.fixtures import synth
    from harness.fixtures.planted import format_defects as P
    from quant.convert import convert
    d = tmp_path_factory.mktemp("pack-models")
    src = synth.make_model(P.ARCH, d / "thin_bf16.safetensors", seed=3)
    good = d / "thin_fp8.safetensors"
    convert(src, good, "fp8")
    t, m = P.load(good)
    t, m = P.inverted_scale(t, m)               # one layer's weight_scale inverted: loads fine, renders wrong
    bad = P.save(t, m, d / "thin_fp8_BAD.safetensors")
    return {"src": src, "good": good, "bad": bad}


def _servers():
    out = [pytest.param("embedded", id="embedded-0.3.75")]
    out.append(pytest.param("upstream", id="upstream", marks=pytest.mark.skipif(
        not os.environ.get("QUANTGATE_UPSTREAM_PYTHON"), reason="no upstream ComfyUI (./qg sets it up)")))
    return out


@pytest.fixture(scope="module", params=_servers())
def pack_server(request, quantgate_wheel, model_files, tmp_path_factory):
    from harness.comfy.server import ComfyServer, prepare_embedded
    from harness.render.matrix import upstream_checkout
    from tests._wheel import venv_with_wheel
    if request.param == "embedded":
        root, base_py = prepare_embedded(), None
    else:
        root, base_py = upstream_checkout()
    work = tmp_path_factory.mktemp(f"pack-{request.param}")
    py = venv_with_wheel(work / "venv", quantgate_wheel, base_py)
    base = work / "base"
    shutil.copytree(PACK, base / "custom_nodes" / "quantgate", ignore=shutil.ignore_patterns("__pycache__"))
    with ComfyServer(root, base, python=str(py), install_nodes=False) as srv:
        for f in model_files.values():
            srv.add_model(f)
        yield srv


def _check(client, model, source, strict=False):
    res = client.run({"1": {"class_type": "QGCheckModel",
                            "inputs": {"model": model, "source": source, "strict": strict}}}, timeout=300)
    out = res.history["outputs"]["1"]
    return out["text"][0]


def test_pack_loads_and_checks_good_and_bad_files(pack_server, model_files):
    c = pack_server.client()
    info = c.object_info()
    for node in ("QGCheckModel", "QGRandomConditioning", "QGActivationEmulation", "QGCalibrate"):
        assert node in info, node
        assert info[node]["python_module"] == "custom_nodes.quantgate", info[node]["python_module"]
    req = info["QGCheckModel"]["input"]["required"]
    names = {f"diffusion_models/{p.name}" for p in model_files.values()}
    assert names <= set(req["model"][0]) and names <= set(req["source"][0])
    assert info["QGCheckModel"]["output_node"] is True
    log = pack_server.log_text()
    # the pack itself imported and its pyproject.toml parsed (ComfyUI's own comfy_extras may miss optional
    # dependencies such as torchaudio in this environment: those lines are not about the pack)
    pack_lines = [ln for ln in log.splitlines() if "custom_nodes/quantgate" in ln]
    assert "Unable to parse pyproject.toml" not in log, log[-3000:]
    assert any(ln.strip().endswith("custom_nodes/quantgate") and "seconds:" in ln for ln in pack_lines), log[-3000:]
    assert not [ln for ln in pack_lines if "IMPORT FAILED" in ln or "Cannot import" in ln], pack_lines
    ext = c.extensions()
    assert "/extensions/quantgate/quantgate_verdict.js" in ext, ext

    src = f"diffusion_models/{model_files['src'].name}"
    good = _check(c, f"diffusion_models/{model_files['good'].name}", src)
    assert good.splitlines()[1] == "PASS", good
    assert "checked: numeric" in good and "comfy-kitchen" in good and str(model_files["good"]) not in good
    bad = _check(c, f"diffusion_models/{model_files['bad'].name}", src)
    assert bad.splitlines()[1] == "FAIL", bad
    assert LAYER in bad and "checked: numeric" in bad
    # no source: header rules + statistics only, said so
    alone = _check(c, f"diffusion_models/{model_files['good'].name}", "(none: header rules + statistics)")
    assert alone.splitlines()[1].startswith("PASS (no source selected") and "checked: numeric" not in alone
    print(f"\n--- ComfyUI {pack_server.version}: good ---\n{good}\n--- bad ---\n{bad}")
