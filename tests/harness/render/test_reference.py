"""Issue 21: the render gate judges each candidate against its own reference conversion, on the render
alone (``gate --no-verify``: no format gate, no source comparison of the weights).

One gate run in the session's embedded ComfyUI over the trained tiny reference model: the good files
(the demo's three, calibrated, learned rounding, margin 1.2, fp8 with full_precision_matrix_mult, a
Q8_0-derived preset, global scale x2 with block scales /2) must pass, every planted quality defect
(harness/fixtures/planted/quality_defects.py) must fail, and -- the point of the issue -- the absolute floor alone
lets through defects that the reference comparison catches. The plan is one seed at 64x64 (CI time), plus one
run at the policy's own plan (6 renders) for the headline cases NVFP4 inputs x1/2 and fp8 x2^14; the
margins in policy.toml come from benchmarks/render_noise.py, not from these files."""
from __future__ import annotations

import json
import os

import pytest

from harness.fixtures.planted import quality_defects as qd
from harness.render import gate, reference
from tests._inproc import run_main

PLAN = dict(seeds=[1], sizes=[[64, 64]])
# one gate run of 18 files + their references (~45 renders): ~6 min on the 2-core box at load ~10, over
# pytest-timeout's 600 s at load ~12 -- a hang guard, not a timing
pytestmark = pytest.mark.timeout(1800)
CAL_SEED = 11           # calibration seed: not a render seed of the gate

GOOD = ["demo fp8-legacy", "demo fp8", "demo nvfp4", "fp8 calibrated", "fp8 fpmm", "nvfp4 calibrated",
        "nvfp4 margin 1.2", "nvfp4 learned", "nvfp4 Q8_0 preset", "nvfp4 global x2"]
# defect class -> planted files (issue 21's four classes, severities chosen before any gate run)
PLANTED = {
    # NVFP4 inputs x1/2 and fp8 x2^14 are judged at the policy's own plan (test_headline_defects_fail_at_the_gates_plan):
    # on ONE render the n = 1 margins (ratio 3.2, slack 0.0028) pass them -- on the benchmark's single renders x1/2
    # passed 6 of 6 and x2^14 5 of 6 (benchmarks/results/cpu-planted-render-paired-2026-12-07.json); the pair's
    # noise shrinks with the renders averaged, the margins with it
    "activation scales too small": ["nvfp4 input x1/16", "fp8 input x1/2", "fp8 input x1/16"],
    "nvfp4 block scales shifted down": ["nvfp4 block scales -4 codes"],     # x0.59-0.84 per block
    "nvfp4 global scale up, block scales underflow": ["nvfp4 global up 10pct underflow"],
    "fp8 per-tensor scale far too large": ["fp8 scale x2^16"],
}


@pytest.fixture(scope="module")
def files(comfy_session, thin_source, tmp_path_factory):
    from harness.activations.record import record_file
    from quant.convert import convert, make_plan
    from quant.sources import open_source
    d = tmp_path_factory.mktemp("reference-gate")
    comfy_session.server.add_model(thin_source, "diffusion_models", thin_source.name)
    comfy_session.vae()
    cal = d / "calib.json"
    rc, _, err = run_main("calibrate", thin_source, "--comfy-url", comfy_session.client.url, "--seeds", CAL_SEED,
                          "--size", "64x64", "--bins", "2", "-o", cal)
    assert rc == 0, err
    with open_source(thin_source) as s:
        layers = [x.layer for x in make_plan(s, None, "nvfp4").quantized()]
    acts = d / "acts.safetensors"
    record_file(thin_source, layers, acts, seeds=(CAL_SEED,), classes=(1,), sizes=((8, 8),), rows=512)
    f = {}

    def c(label, fmt, **kw):
        f[label] = d / (label.replace(" ", "_").replace("/", "-") + ".safetensors")
        convert(thin_source, f[label], fmt, force=True, **kw)
    for fmt in ("fp8-legacy", "fp8", "nvfp4"):
        c(f"demo {fmt}", fmt, comfy_version=comfy_session.version)
    c("fp8 calibrated", "fp8", act_stats=cal)
    c("fp8 fpmm", "fp8", act_stats=cal, keep_fpmm=True)
    c("nvfp4 calibrated", "nvfp4", act_stats=cal)
    c("nvfp4 margin 1.2", "nvfp4", act_stats=cal, margin=1.2)
    c("nvfp4 learned", "nvfp4", rounding="learned", act_samples=acts, act_stats=cal, learned_iters=10)
    from harness.fixtures.gguf_synth import make_gguf
    gg = make_gguf("wan21-t2v-tiny", d / "tiny-Q8_0.gguf", "Q8_0", src_dtype="BF16")
    c("nvfp4 Q8_0 preset", "nvfp4", preset_from_gguf=gg)

    def p(label, fn, base, arg):
        f[label] = fn(f[base], d / (label.replace(" ", "_").replace("/", "-") + ".safetensors"), arg)
    p("nvfp4 global x2", qd.global_scale_up, "nvfp4 calibrated", 1)
    p("nvfp4 input x1/2", qd.scale_inputs, "nvfp4 calibrated", 1 / 2)
    p("nvfp4 input x1/16", qd.scale_inputs, "nvfp4 calibrated", 1 / 16)
    p("fp8 input x1/2", qd.scale_inputs, "fp8 calibrated", 1 / 2)
    p("fp8 input x1/16", qd.scale_inputs, "fp8 calibrated", 1 / 16)
    p("nvfp4 block scales -4 codes", qd.shift_block_scales, "demo nvfp4", 4)
    # k from the file's block scales (x2^12 changes nothing on this model: every block scale stays normal)
    p("nvfp4 global up 10pct underflow", qd.global_scale_up, "demo nvfp4",
      qd.underflow_k(f["demo nvfp4"], 0.10))
    # x2^16: 9 weight levels left, 53 % of the weights zero, 38 % relative weight error; x2^14 (10 % error, 14 %
    # zeros) rendered like its reference here (1-SSIM 0.0028 vs 0.0025): not a visible defect on this model
    p("fp8 scale x2^16", qd.coarse_fp8, "demo fp8", 2 ** 16)
    return d, f


@pytest.fixture(scope="module")
def record(comfy_session, thin_source, files):
    d, f = files
    pol = gate.load_policy()
    pol["plan"] = dict(pol["plan"], **PLAN)
    labels = GOOD + [x for v in PLANTED.values() for x in v]
    rec = gate.run_gate(comfy_session, thin_source, [(k, f[k]) for k in labels], policy=pol, work_dir=d)
    keep = os.environ.get("QUANTGATE_KEEP_REFERENCE_REPORT")          # a copy of report.html / gate.json to look at
    if keep:
        from harness.render.report import write_report
        write_report(rec, keep, title="quantgate render gate: reference conversion (issue 21 planted defects)")
    return rec


# The headline cases at the gate's own plan (policy.toml: 3 seeds x 64x64, 96x64 = 6 renders averaged;
# the margins for 6 renders come from the fresh noise run): NVFP4 with every input_scale halved and FP8 with its
# per-tensor weight scale x2^14 (+10 % weight error) must fail, the good files beside them must pass.
HEADLINE_GOOD = ["nvfp4 calibrated", "nvfp4 margin 1.2", "fp8 calibrated", "demo fp8"]
HEADLINE_PLANTED = ["nvfp4 input x1/2", "fp8 scale x2^14"]


@pytest.fixture(scope="module")
def headline(comfy_session, thin_source, files):
    d, f = files
    f["fp8 scale x2^14"] = qd.coarse_fp8(f["demo fp8"], d / "fp8_scale_x2^14.safetensors", 2 ** 14)
    pol = gate.load_policy()                              # the policy's own plan
    return gate.run_gate(comfy_session, thin_source, [(k, f[k]) for k in HEADLINE_GOOD + HEADLINE_PLANTED],
                         policy=pol, work_dir=d)


def test_headline_defects_fail_at_the_gates_plan(headline):
    n = len(headline["seeds"]) * len(headline["sizes"])
    for label in HEADLINE_GOOD:
        c = _c(headline, label)
        assert c["verdict"] == "pass", (label, c["reasons"], c["reference"])
        assert c["reference"]["renders"] == n and c["reference"]["margins_for_renders"] <= n
    for label in HEADLINE_PLANTED:
        c = _c(headline, label)
        assert c["verdict"] == "fail" and not c["reference"]["pass"], (label, c["min_ssim"], c["reference"])
        assert c["min_ssim"] >= c["threshold"], (label, "the absolute floor alone would have caught it")


def test_margins_narrow_with_the_renders_averaged():
    """policy.toml's table: the gate takes the entry of the largest tabulated n <= its renders."""
    pol = gate.load_policy()["reference"]
    table = sorted(pol["margins"], key=lambda e: e["renders"])
    assert table[0]["renders"] == 1
    assert [e["ratio"] for e in table] == sorted((e["ratio"] for e in table), reverse=True)
    assert reference.margins(pol, 1)[:2] == (table[0]["ratio"], table[0]["slack"])
    assert reference.margins(pol, 6)[2] == max(e["renders"] for e in table if e["renders"] <= 6)
    assert reference.margins(pol, 10**6)[2] == table[-1]["renders"]


def _c(rec, label):
    return next(c for c in rec["candidates"] if c["label"] == label)


def test_planted_factories_change_only_what_they_claim(files):
    """global x2 is an exactly equivalent file (the dequantized weights are identical); the others change
    the named tensors only."""
    import torch

    from harness.render.twin import make_dequantized_twin
    from quant.safetensors_io import SafetensorsFile
    d, f = files
    a = make_dequantized_twin(f["nvfp4 calibrated"], d / "twin-a.safetensors")
    b = make_dequantized_twin(f["nvfp4 global x2"], d / "twin-b.safetensors")
    with SafetensorsFile(a) as x, SafetensorsFile(b) as y:
        assert set(x.keys()) == set(y.keys())
        assert all(torch.equal(x.get(k), y.get(k)) for k in x.keys())
    with SafetensorsFile(f["nvfp4 calibrated"]) as x, SafetensorsFile(f["nvfp4 input x1/2"]) as y:
        for k in x.keys():
            if k.endswith(".input_scale"):
                assert float(y.get(k)) == pytest.approx(float(x.get(k)) / 2)
            else:
                assert torch.equal(x.get(k).view(torch.uint8) if x.get(k).dtype == torch.float8_e4m3fn else x.get(k),
                                   y.get(k).view(torch.uint8) if y.get(k).dtype == torch.float8_e4m3fn else y.get(k))


def test_every_good_file_passes_the_render_alone(record):
    for label in GOOD:
        c = _c(record, label)
        assert c["verify"] is None                               # gate --no-verify: the render decides
        assert c["reference"]["available"], (label, c["reference"])
        assert c["verdict"] == "pass", (label, c["reasons"], c["reference"])


@pytest.mark.parametrize("cls", list(PLANTED))
def test_every_planted_defect_fails_the_render_alone(record, cls):
    for label in PLANTED[cls]:
        c = _c(record, label)
        assert c["verify"] is None and c["execution_error"] is None
        assert c["verdict"] == "fail", (cls, label, c["min_ssim"], c["reference"])
        assert not c["reference"]["pass"], (cls, label, c["reference"])
        assert any("reference conversion" in r for r in c["reasons"])


def test_the_absolute_floor_alone_lets_defects_through(record):
    """Why the reference is needed: on this model some planted files clear the format's absolute SSIM floor
    (they passed the render gate before issue 21) and only the reference comparison fails them. At seed 1
    64x64: block scales -4 codes 0.9156 vs the 0.90 floor (benchmarks/results/cpu-planted-render-2026-12-07.json;
    fp8 inputs x1/2 sits at the 0.97 floor: 0.9676 here, 0.9783-0.99 in the benchmark)."""
    through = [x for v in PLANTED.values() for x in v if _c(record, x)["min_ssim"] >= _c(record, x)["threshold"]]
    assert through, "every planted file is below the absolute floor: this test no longer shows the gap"
    for label in through:
        assert not _c(record, label)["reference"]["pass"]


def test_references_share_one_conversion_per_layer_plan(record, files):
    """Candidates with the same format and per-layer decisions share one reference file; the reference's
    activation path follows the candidate's (dynamic scales), and it is round-to-nearest of the source."""
    refs = {r["label"]: r for r in record["references"]}
    by_path = {}
    for r in refs.values():
        by_path.setdefault(r["path"], []).append(r["label"])
    assert len(by_path) <= 4          # fp8-legacy, fp8, nvfp4, nvfp4 with every Linear fp8 (Q8_0 preset)
    cal = _c(record, "nvfp4 calibrated")["reference"]
    assert cal["emulated"] and refs[cal["label"]]["activations"]["emulated"]
    fpmm = _c(record, "fp8 fpmm")["reference"]
    assert not fpmm["emulated"]
    d, f = files
    target, plan = reference.layer_plan(f["nvfp4 Q8_0 preset"], record["source"]["path"])
    # every Linear fp8: the file declares fp8 layers only, so its reference is an fp8 conversion of those layers
    assert target == "fp8" and set(plan.values()) == {"fp8"}


def test_gate_json_and_report_show_the_reference(record, tmp_path):
    from harness.render.report import write_report
    rp, gj = write_report(record, tmp_path)
    g = json.loads(gj.read_text())
    assert g["references"] and all(r["role"] == "reference" for r in g["references"])
    c = next(c for c in g["candidates"] if c["label"] == "nvfp4 input x1/16")
    assert c["reference"]["mean_dissimilarity"] > c["reference"]["limit"]
    html = rp.read_text()
    assert "Reference conversions" in html and "vs its reference conversion" in html
    assert html.count("<div class='lbl'>reference ") >= len(GOOD)
