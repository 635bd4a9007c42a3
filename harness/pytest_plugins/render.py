"""pytest plugin of the render gate (loaded by -p in the checkout, by the pytest11 entry point when installed).

* ``pytest -m render --checkpoint CKPT --source SRC [--comfy-url URL | --comfy-root PATH]
  [--workflow W --model-node ID] [--render-out DIR] [--render-policy TOML]`` runs the render gate on a
  user's file as tests (harness/pytest_plugins/gate_tests/test_render_gate.py); report.html + gate.json go to
  --render-out.
* Fixtures for quantgate's own tests: ``comfy_session`` (one embedded ComfyUI server for the whole
  session), ``thin_source`` (the seeded thin WAN 2.1 checkpoint).
"""
from __future__ import annotations

from pathlib import Path

import pytest

_OPTIONS = [
    (("--comfy-url",), dict(action="store", default=None, metavar="URL", help="render gate: use this ComfyUI server")),
    (("--comfy-root",), dict(action="store", default=None, metavar="PATH",
                             help="render gate: start a server from this ComfyUI checkout")),
    (("--comfy-python",), dict(action="store", default=None, metavar="PATH",
                               help="render gate: with --comfy-root, the Python that runs that checkout")),
    (("--workflow",), dict(action="store", default=None, metavar="FILE", help="render gate: API-format workflow")),
    (("--model-node",), dict(action="store", default=None, metavar="ID",
                             help="render gate: node id in --workflow that loads the checkpoint")),
    (("--render-out",), dict(action="store", default=None, metavar="DIR",
                             help="render gate: where report.html and gate.json go")),
    (("--render-policy",), dict(action="store", default=None, metavar="TOML",
                                help="render gate: thresholds and render plan (seeds, sizes, steps; default: "
                                     "quantgate's harness/policy.toml), as `quantgate gate --policy`")),
]


def pytest_addoption(parser):
    group = parser.getgroup("quantgate render gate")
    for names, kw in _OPTIONS:
        group.addoption(*names, **kw)       # --checkpoint/--source: harness.pytest_plugins.options


def _opt(config, name):
    try:
        v = config.getoption(name)
    except ValueError:
        return None
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return v


@pytest.fixture(scope="session")
def thin_source():
    from harness.render import models
    return models.reference_model()


@pytest.fixture(scope="session")
def comfy_session(tmp_path_factory):
    """One real embedded ComfyUI server shared by the session's tests (stopped at the end)."""
    from harness.render.session import open_session
    base = tmp_path_factory.mktemp("comfy-base")
    with open_session(work_dir=base) as s:
        yield s


@pytest.fixture(scope="session")
def render_gate_record(request, tmp_path_factory):
    """The render gate's record for --checkpoint vs --source. Without them the same tests run on a
    demo candidate (the seeded thin WAN 2.1 converted to fp8 by quant.convert, for the embedded
    server's ComfyUI version) in the session's shared server -- they never pass vacuously."""
    cfg = request.config
    ckpt, src = _opt(cfg, "checkpoint"), _opt(cfg, "source")
    from harness.render.gate import run_gate
    from harness.render.report import write_report
    from harness.render.session import open_session
    from harness.verify.record import run_verify
    from harness.render.workflow import Workflow
    out = Path(_opt(cfg, "render_out") or tmp_path_factory.mktemp("render-gate"))
    work = tmp_path_factory.mktemp("render-work")
    if bool(ckpt) != bool(src):
        pytest.fail("render gate: pass both --checkpoint CKPT and --source SRC", pytrace=False)
    if not ckpt:
        from quant.convert import convert
        s = request.getfixturevalue("comfy_session")
        src = request.getfixturevalue("thin_source")
        ckpt = work / "demo_candidate_fp8mixed.safetensors"
        convert(src, ckpt, "fp8", force=True, comfy_version=s.version)
        rec = run_gate(s, src, [ckpt], work_dir=work, verify_fn=run_verify)
        write_report(rec, out)
        rec["_out"] = str(out)
        return rec
    from harness.render.gate import check_render_inputs, load_policy
    from quant.errors import QuantgateError
    try:
        check_render_inputs(src, [ckpt])        # no pickle ever reaches the server
        policy = load_policy(_opt(cfg, "render_policy"))
    except QuantgateError as e:
        pytest.fail(f"render gate: {e}", pytrace=False)
    wf = Workflow.from_arg(_opt(cfg, "workflow"), _opt(cfg, "model_node"))
    with open_session(_opt(cfg, "comfy_url"), _opt(cfg, "comfy_root"), work_dir=work / "comfy",
                      keep_log=out / "comfyui.log", comfy_python=_opt(cfg, "comfy_python")) as s:
        if _opt(cfg, "workflow"):
            s.check_nodes(wf.wf)
        rec = run_gate(s, src, [ckpt], policy=policy, workflow=wf, work_dir=work, verify_fn=run_verify)
    write_report(rec, out)
    rec["_out"] = str(out)
    return rec
