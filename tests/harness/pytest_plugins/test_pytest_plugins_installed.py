"""The gate plugins as a user gets them: quantgate's wheel installed into a fresh venv (pytest11 entry points, the
gate's tests shipped in the package), pytest run from an EMPTY directory on a file outside any checkout:

    pytest -m format --checkpoint X [--source Y]        pytest -m render --checkpoint X --source Y

A good file passes, a bad one fails with an assertion that names the layer, --junitxml records it, and a plain
``pytest`` there collects nothing of quantgate's (the plugins never add tests to a user's own runs)."""
from __future__ import annotations

import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

LAYER = "blocks.0.self_attn.q"


@pytest.fixture(scope="module")
def user(quantgate_wheel, tmp_path_factory):
    from tests._wheel import venv_with_wheel
    d = tmp_path_factory.mktemp("plugin-user")
    py = venv_with_wheel(d / "venv", quantgate_wheel)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "QUANTGATE_DEBUG", "QUANTGATE_CALLER_DIR", "PYTEST_ADDOPTS", "PYTEST_PLUGINS")}
    return {"py": py, "env": env, "dir": d}


def _pytest(user, cwd, *args, timeout=600, cache_flag=True):
    cwd.mkdir(exist_ok=True)
    assert not [p for p in cwd.iterdir() if p.name != "junit.xml"], "not an empty directory"
    r = subprocess.run([str(user["py"]), "-m", "pytest", *(["-p", "no:cacheprovider"] if cache_flag else []),
                        "-p", "no:randomly", *map(str, args)],
                       cwd=cwd, env=user["env"], capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def _junit(path):
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    cases = suite.findall("testcase")
    fails = [f for c in cases for f in c.findall("failure")]
    return cases, fails


@pytest.fixture(scope="module")
def format_files(tmp_path_factory):
    from harness.fixtures import synth
    from harness.fixtures.planted import format_defects as P
    from quant.convert import convert
    d = tmp_path_factory.mktemp("plugin-files")
    src = synth.make_model(P.ARCH, d / "model_bf16.safetensors", seed=3)
    good = d / "model_fp8.safetensors"
    convert(src, good, "fp8")
    t, m = P.load(good)
    t, m = P.inverted_scale(t, m)
    return {"src": src, "good": good, "bad": P.save(t, m, d / "model_fp8_bad.safetensors")}


def test_format_gate_from_the_installed_wheel(user, format_files, tmp_path):
    # the options exist in an empty directory (entry points), and a plain run there collects nothing of ours
    rc, out = _pytest(user, tmp_path / "help", "--help")
    assert rc == 0 and "--checkpoint=CKPT" in out and "--reference=REF" in out and "--render-out=DIR" in out
    rc, out = _pytest(user, tmp_path / "plain")
    assert rc == 5 and "no tests ran" in out, out

    # entry points AND -p (as quantgate's own addopts do): each plugin once, each gate test collected once
    rc, out = _pytest(user, tmp_path / "both", *[x for m in ("options", "format", "render")
                                                 for x in ("-p", f"harness.pytest_plugins.{m}")],
                      "-m", "format", "--checkpoint", format_files["good"], "--collect-only", "-q")
    ids = [ln for ln in out.splitlines() if "::test_format" in ln]
    assert rc == 0 and ids and len(ids) == len(set(ids)) and "already registered" not in out, out

    # relative paths, as a user types them: resolved against the directory pytest runs in
    rel = {k: os.path.relpath(v, tmp_path / "good") for k, v in format_files.items()}
    # ... and as a user runs it: pytest's cache not turned off by hand. pytest guesses its rootdir from the model
    # paths (their common ancestor with the run directory); nothing may be written there or beside the models
    rc, out = _pytest(user, tmp_path / "good", "-m", "format", "--checkpoint", rel["good"],
                      "--source", rel["src"], "--junitxml", "junit.xml", cache_flag=False)
    assert rc == 0, out
    guess = Path(os.path.commonpath([tmp_path / "good", format_files["good"]]))
    assert f"pytest's rootdir guess is {guess}" in out and f"rootdir: {guess}" in out, out
    written = [p for d in (guess, tmp_path, tmp_path / "good", format_files["good"].parent)
               for p in d.glob(".pytest_cache")]
    assert not written, written
    assert f"format gate: checkpoint {format_files['good']}" in out and " passed" in out
    cases, fails = _junit(tmp_path / "good" / "junit.xml")
    assert len(cases) >= 5 and not fails
    # the shipped tests, from the installed package (not a checkout): the node ids carry the site-packages path
    assert all(c.get("classname", "").endswith("site-packages.harness.pytest_plugins.gate_tests.test_format_gate")
               for c in cases), [c.get("classname") for c in cases]

    rc, out = _pytest(user, tmp_path / "bad", "-m", "format", "--checkpoint", format_files["bad"],
                      "--source", format_files["src"], "--junitxml", tmp_path / "bad" / "junit.xml")
    assert rc == 1, out
    assert "Traceback" not in out and "FAILED" in out and LAYER in out and "numeric.mismatch" in out
    cases, fails = _junit(tmp_path / "bad" / "junit.xml")
    assert fails and any(LAYER in (f.get("message", "") + (f.text or "")) for f in fails)


@pytest.fixture(scope="module")
def render_files(tmp_path_factory):
    from harness.fixtures.planted import render_defects
    from harness.render import models
    from quant.convert import convert
    d = tmp_path_factory.mktemp("plugin-render")
    src = models.reference_model()
    good = d / "tiny_fp8-legacy.safetensors"
    convert(src, good, "fp8-legacy", comfy_version="0.3.75")
    bad = d / "tiny_fp8-legacy_bad.safetensors"
    render_defects.fp8_file(src, bad, "legacy", drop_scales=("head.head",))
    return {"src": src, "good": good, "bad": bad}


def _one_render_policy(path):
    """quantgate's own policy (thresholds, control, steps) with one seed at one size: the same gate, 4 renders per
    run (source, file, control, repeat) instead of 14, so both runs fit CI's time."""
    import re

    from harness.render.gate import POLICY_PATH
    text = POLICY_PATH.read_text()
    text, n1 = re.subn(r"(?m)^seeds = \[[^\]]*\]", "seeds = [1]", text)
    text, n2 = re.subn(r"(?m)^sizes = \[\[.*\]\]", "sizes = [[64, 64]]", text)
    assert n1 == n2 == 1
    path.write_text(text)
    return path


@pytest.mark.slow
def test_render_gate_from_the_installed_wheel(user, render_files, tmp_path):
    import json
    policy = _one_render_policy(tmp_path / "policy.toml")
    rc, out = _pytest(user, tmp_path / "good", "-m", "render", "--checkpoint", render_files["good"],
                      "--source", render_files["src"], "--render-out", tmp_path / "good-out",
                      "--render-policy", policy, "--junitxml", tmp_path / "good" / "junit.xml")
    assert rc == 0, out
    assert (tmp_path / "good-out" / "gate.json").is_file() and (tmp_path / "good-out" / "report.html").is_file()
    rec = json.loads((tmp_path / "good-out" / "gate.json").read_text())
    cand = [r for r in rec["renders"] if r["role"] == "candidate"]
    assert [(r["seed"], r["width"], r["height"]) for r in cand] == [(1, 64, 64)]     # --render-policy was used
    assert rec["candidates"][0]["verdict"] == "pass"
    cases, fails = _junit(tmp_path / "good" / "junit.xml")
    assert len(cases) >= 5 and not fails

    rc, out = _pytest(user, tmp_path / "bad", "-m", "render", "--checkpoint", render_files["bad"],
                      "--source", render_files["src"], "--render-policy", policy,
                      "--junitxml", tmp_path / "bad" / "junit.xml")
    assert rc == 1, out
    assert "Traceback" not in out and "test_gate_verdict" in out and "head.head" in out
    cases, fails = _junit(tmp_path / "bad" / "junit.xml")
    assert fails and any("head.head" in (f.get("message", "") + (f.text or "")) for f in fails)
    fmt = [(f.get("message", "") + (f.text or "")) for c in cases if c.get("name") == "test_format_gate"
           for f in c.findall("failure")]
    assert fmt and "companion.missing" in fmt[0] and "head.head" in fmt[0], fmt       # the finding names the layer
