"""`quantgate gate` (against the shared real server through --comfy-url) and `quantgate demo`."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.fixtures.planted import render_defects as fixtures
from tests._policies import small_policy_toml

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def url_files(comfy_session, thin_source, tmp_path_factory):
    """Files placed in the shared server's models folder under their own names (as a user would)."""
    d = tmp_path_factory.mktemp("cli")
    good = fixtures.fp8_file(thin_source, d / "cli_fp8_legacy.safetensors", "legacy")
    bad = fixtures.fp8_file(thin_source, d / "cli_fp8_legacy_nohead.safetensors", "legacy", drop_scales=("head.head",))
    for p in (thin_source, good, bad):
        comfy_session.server.add_model(p, "diffusion_models", p.name)
    comfy_session.vae()                      # the random TAEHV the built-in workflow decodes with
    pol = d / "small.toml"
    pol.write_text(small_policy_toml())
    return d, good, bad, pol


def test_gate_cli_pass_exit_0(cli, comfy_session, thin_source, url_files):
    d, good, bad, pol = url_files
    r = cli("gate", good, "--source", thin_source, "--comfy-url", comfy_session.client.url, "--policy", pol,
            "--out", d / "rep-good", "--no-verify", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict: PASS" in r.stdout and "Traceback" not in r.stderr
    g = json.loads((d / "rep-good" / "gate.json").read_text())
    assert g["verdict"] == "pass" and g["comfyui"]["url"] == comfy_session.client.url
    assert [c["format"] for c in g["candidates"]] == ["fp8-legacy"]
    assert len([r for r in g["renders"] if r["role"] == "candidate"]) == 2
    assert (d / "rep-good" / "report.html").stat().st_size > 10_000


def test_gate_cli_silent_wrong_exit_1_comfy_root(cli, comfy_session, thin_source, url_files):
    """--comfy-root: quantgate starts (and stops) a server from a given ComfyUI checkout."""
    import sys
    d, good, bad, pol = url_files
    # --comfy-python: the checkout's own interpreter (here a wrapper that leaves a trace, then runs ours)
    trace = d / "comfy-python-used"
    wrapper = d / "comfy-python"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> "{trace}"\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    r = cli("gate", bad, "--source", thin_source, "--comfy-root", comfy_session.server.root, "--policy", pol,
            "--out", d / "rep-bad", "--no-verify", "--comfy-python", wrapper, timeout=300)
    assert "main.py" in trace.read_text()
    assert r.returncode == 1, r.stdout + r.stderr
    assert "verdict: FAIL" in r.stdout and "head.head.scale_weight" in r.stdout
    g = json.loads((d / "rep-bad" / "gate.json").read_text())
    assert g["candidates"][0]["execution_error"] is None and g["candidates"][0]["verdict"] == "fail"
    assert g["comfyui"]["url"] is None and g["comfyui"]["embedded"] is False
    assert "unet missing" in (d / "rep-bad" / "comfyui.log").read_text()


def test_gate_cli_file_not_on_url_server_exit_2(cli, comfy_session, thin_source, tmp_path, url_files):
    other = tmp_path / "not_there.safetensors"
    other.write_bytes(thin_source.read_bytes())
    r = cli("gate", other, "--source", thin_source, "--comfy-url", comfy_session.client.url, "--out", tmp_path / "o",
            timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "does not list not_there.safetensors" in r.stderr


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("QUANTGATE_DEBUG", None)
    r = subprocess.run([sys.executable, "-m", "harness.cli", "demo", "--out", str(out)], capture_output=True,
                       text=True, timeout=1200, cwd=ROOT, env=env)   # a hang guard, not a speed test
    return r, out


def test_demo_runs_end_to_end(demo):
    r, out = demo
    assert r.returncode in (0, 1), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    g = json.loads((out / "gate.json").read_text())
    by = {c["label"]: c for c in g["candidates"]}
    assert set(by) == {"fp8-legacy", "fp8", "nvfp4", "planted-defect"}
    for label in ("fp8-legacy", "fp8", "nvfp4"):
        assert by[label]["min_ssim"] is not None and by[label]["execution_error"] is None
        assert label in r.stdout
    assert by["nvfp4"]["rendered_as"] == "dequantized twin"
    assert by["fp8"]["verdict"] == "pass" and by["nvfp4"]["verdict"] == "pass"
    assert by["planted-defect"]["verdict"] == "fail"
    assert by["fp8"]["verify"]["available"] and by["fp8"]["verify"]["passed"]
    assert (out / "report.html").stat().st_size > 50_000
    # the demo's wall time is recorded, not asserted (speed is a benchmark, not a timed test; on a loaded
    # 2-core box it ran 368 s where a quiet one takes ~25 s)
    assert g["demo"]["wall_s"] > 0


def test_demo_every_format_passes(demo):
    r, out = demo
    g = json.loads((out / "gate.json").read_text())
    assert r.returncode == 0 and all(c["verdict"] == "pass" for c in g["candidates"] if c["label"] != "planted-defect")


def test_comfy_python_needs_root_and_an_executable(cli, thin_source, tmp_path):
    r = cli("gate", thin_source, "--source", thin_source, "--comfy-python", "/bin/sh", "--out", tmp_path / "o")
    assert r.returncode == 2 and "--comfy-root" in r.stderr and "Traceback" not in r.stderr
    r = cli("gate", thin_source, "--source", thin_source, "--comfy-root", tmp_path, "--comfy-python",
            tmp_path / "nope", "--out", tmp_path / "o")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
