"""The render gate on a user's checkpoint, as tests:

    pytest -m render --checkpoint CKPT --source SRC [--comfy-url URL | --comfy-root PATH]
           [--workflow W --model-node ID] [--render-out DIR]

Without --checkpoint/--source they run on a demo candidate (thin WAN 2.1 -> fp8) in the shared
embedded server (fixture ``render_gate_record``)."""
import pytest

pytestmark = pytest.mark.render


def _cand(rec):
    return rec["candidates"][0]


def test_renders_without_comfyui_error(render_gate_record):
    e = _cand(render_gate_record)["execution_error"]
    assert e is None, f"node {e['node_id']} ({e['node_type']}) raised {e['exception_type']}: {e['message'][:300]}"


def test_ssim_per_render_meets_threshold(render_gate_record):
    c = _cand(render_gate_record)
    assert c["execution_error"] is None and render_gate_record["renders"]
    low = [r for r in render_gate_record["renders"] if r["role"] == "candidate" and not r["pass"]]
    assert not low, "; ".join(f"seed {r['seed']} {r['width']}x{r['height']}: SSIM {r['ssim']:.4f} < {r['threshold']}"
                              for r in low)


def test_comfyui_loads_every_key(render_gate_record):
    c = _cand(render_gate_record)
    bad = [r for r in c["reasons"] if "keys" in r]
    assert not bad, bad


def test_control_discriminates(render_gate_record):
    ctl = render_gate_record["control"]
    assert ctl["pass"], f"control SSIM {ctl['ssim']:.4f} > {ctl['max_ssim']}: this render cannot tell models apart"


def test_source_renders_deterministically(render_gate_record):
    rep = render_gate_record["repeat"]
    assert rep["pass"], f"the source rendered twice: SSIM {rep['ssim']}, max pixel diff {rep['max_abs_diff']}"


def test_format_gate(render_gate_record):
    v = _cand(render_gate_record)["verify"] or {}
    assert v.get("available"), "quantgate verify did not run"
    assert v["passed"], "\n".join([v["summary"], *(v.get("findings") or [])[:8]])      # findings name the layers


def test_gate_verdict(render_gate_record):
    c = _cand(render_gate_record)
    assert c["verdict"] == "pass", "; ".join(c["reasons"]) + f" (report: {render_gate_record['_out']}/report.html)"
