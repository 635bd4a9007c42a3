"""The render tests' second server: the upstream ComfyUI (../shared/comfyui, 0.33.0, its own venv built by
./qg) for the version matrix of the family tests; started once per test session, on first use."""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def upstream_session(tmp_path_factory):
    from harness.render import matrix
    from harness.render.session import open_session
    assert os.environ.get("QUANTGATE_UPSTREAM_PYTHON"), "run through ./qg test (it builds the upstream venv)"
    root, py = matrix.upstream_checkout()
    with open_session(comfy_root=root, comfy_python=py, work_dir=tmp_path_factory.mktemp("comfy-upstream")) as s:
        yield s


@pytest.fixture(scope="session")
def version_matrix(upstream_session):
    """``f(embedded_record, **run_gate_kwargs)``: the record's candidates rendered again on the upstream server
    (a fixture, not an import: ComfyUI's own ``tests`` package shadows ours once ComfyUI is on sys.path)."""
    return lambda rec, **kw: _matrix(rec, upstream_session, kw)


def _matrix(embedded_record: dict, upstream, run_gate_kwargs: dict) -> dict:
    """The embedded gate record's candidates rendered again on ``upstream`` with the same source, workflow,
    plan and options (verify results reused: they do not depend on the server) -> the matrix record
    (harness.render.matrix.summarize) of the two versions."""
    from pathlib import Path

    from harness.render import matrix
    from harness.render.gate import run_gate
    rec = embedded_record
    slot_src = {"model": rec["source"]["path"], **{k: v["path"] for k, v in rec["source"]["companions"].items()}}
    ver = {(c["path"], slot_src[c["slot"]]): c["verify"] for c in rec["candidates"]}     # one file, two slots: A14B
    cands = [(c["label"], Path(c["path"]), c["slot"]) for c in rec["candidates"]]
    up = run_gate(upstream, rec["source"]["path"], cands, verify_fn=lambda p, s: ver[str(p), str(s)],
                  **run_gate_kwargs)
    m = matrix.summarize([{"target": "embedded", "version": rec["comfyui"]["version"], "record": rec, "report": ""},
                          {"target": "upstream", "version": up["comfyui"]["version"], "record": up, "report": ""}])
    m["_records"] = [rec, up]          # the two gate records (source load warnings, control, repeat)
    return m
