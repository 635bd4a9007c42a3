"""The render gate's version matrix: the same candidate on the embedded ComfyUI 0.3.75 and on the current
upstream tree (../shared/comfyui, its own venv built by ./qg setup), one verdict per version."""
import json
import os
from pathlib import Path

import pytest

from harness.render import matrix
from quant.errors import UsageError
from tests._policies import small_policy_toml

UPSTREAM = Path(__file__).resolve().parents[3].parent / "shared" / "comfyui" / "ComfyUI"


def test_targets_pair_pythons_with_checkouts(tmp_path):
    t = matrix.targets(["embedded", "/a", "/b"], ["/pa", "/pb"])
    assert [(x.label, x.root, x.python) for x in t] == [("embedded", None, None), ("/a", "/a", "/pa"), ("/b", "/b", "/pb")]
    with pytest.raises(UsageError, match="one per checkout"):
        matrix.targets(["/a", "/b"], ["/pa"])
    with pytest.raises(UsageError, match="named twice"):
        matrix.targets(["embedded", "embedded"], None)


def _rec(verdicts):
    return {"verdict": "pass" if all(v == "pass" for v in verdicts.values()) else "fail",
            "source": {"path": "/s.safetensors", "sha256": "0" * 64}, "tool": {"version": "x"},
            "candidates": [{"label": k, "format": "fp8", "rendered_as": "file", "min_ssim": 0.9, "threshold": 0.97,
                            "verdict": v, "reasons": [] if v == "pass" else ["low"]} for k, v in verdicts.items()]}


def test_oldest_passing_is_the_start_of_the_passing_tail():
    runs = [{"target": "c", "version": "0.33.0", "record": _rec({"a": "pass", "b": "pass"}), "report": "/x/c/report.html"},
            {"target": "a", "version": "0.3.75", "record": _rec({"a": "fail", "b": "pass"}), "report": "/x/a/report.html"},
            {"target": "b", "version": "0.8.0", "record": _rec({"a": "pass", "b": "fail"}), "report": "/x/b/report.html"}]
    m = matrix.summarize(runs)
    assert [v["comfyui_version"] for v in m["versions"]] == ["0.3.75", "0.8.0", "0.33.0"]
    # b fails on 0.8.0 although it passed on 0.3.75: it only passes from 0.33.0 on
    assert m["oldest_passing"] == {"a": "0.8.0", "b": "0.33.0"} and m["verdict"] == "fail"


@pytest.mark.slow
def test_kj_recipe_fails_on_0375_passes_on_upstream(cli, thin_source, tmp_path):
    """The KJ recipe keeps embeddings/head Linears in high precision: ComfyUI 0.3.75 casts them to fp8
    without a scale (renders off), current ComfyUI keeps them (renders right). One run, both verdicts."""
    assert (UPSTREAM / "main.py").is_file(), f"the upstream ComfyUI tree is missing at {UPSTREAM}"
    assert os.environ.get("QUANTGATE_UPSTREAM_PYTHON"), "run through ./qg test (it builds the upstream venv)"
    from quant.convert import convert
    kj = tmp_path / "kj_recipe_fp8_e4m3fn_scaled.safetensors"
    convert(thin_source, kj, "fp8-legacy")
    pol = tmp_path / "one.toml"
    pol.write_text(small_policy_toml(sizes=((64, 64),), timeout_s=180))
    out = tmp_path / "matrix"
    r = cli("gate", kj, "--source", thin_source, "--comfy-root", "embedded", "--comfy-root", "upstream",
            "--policy", pol, "--out", out, "--no-verify", timeout=900)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    m = json.loads((out / "gate.json").read_text())
    by_ver = {v["comfyui_version"]: v for v in m["versions"]}
    assert set(by_ver) == {"0.3.75", "0.33.0"}, list(by_ver)
    old, new = by_ver["0.3.75"]["candidates"][0], by_ver["0.33.0"]["candidates"][0]
    assert old["verdict"] == "fail" and new["verdict"] == "pass", (old, new)
    assert new["min_ssim"] > old["min_ssim"]
    assert m["oldest_passing"] == {old["label"]: "0.33.0"}
    assert "passes from" in (out / "report.html").read_text()
    for v in m["versions"]:
        assert Path(v["report"]).is_file() and (Path(v["report"]).parent / "comfyui.log").is_file()
