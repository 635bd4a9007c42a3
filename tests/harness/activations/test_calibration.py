"""Calibration through an unpatched ComfyUI, calibrated input scales, verify --calibration, and the
render gate's activation emulation -- against the session's real embedded ComfyUI server.

One calibration run (CLI, --comfy-url at the session server) feeds every test here."""
import json
import math

import pytest
import torch

from harness.activations import collect
from harness.fixtures import activation_variants as variants
from harness.render import emulation, gate
from harness.render.workflow import Workflow
from quant.activations import statistics as calibration
from quant import formats
from quant.errors import InputError
from quant.safetensors_io import SafetensorsFile
from tests._inproc import one_error_line, run_main

SIZE = (64, 64)


@pytest.fixture(scope="module")
def calib(comfy_session, thin_source, tmp_path_factory):
    """`quantgate calibrate` against the running session server (seed 1, one held-out seed, --report)."""
    d = tmp_path_factory.mktemp("calib")
    comfy_session.server.add_model(thin_source, "diffusion_models", thin_source.name)   # as a user's models/
    comfy_session.vae()
    out = d / "calib.json"
    rc, stdout, err = run_main("calibrate", thin_source, "--comfy-url", comfy_session.client.url, "--seeds", "1",
                               "--size", "64x64", "--bins", "3", "--holdout-seeds", "7", "--sample-rows", "4",
                               "--act-samples", d / "acts.safetensors", "--act-rows", "48", "--report", "-o", out)
    assert rc == 0, err
    return d, out, json.loads(out.read_text()), stdout


def test_calibration_json_has_stats_and_provenance(calib, thin_source):
    from harness.verify.record import sha256_file
    _, out, cal, stdout = calib
    assert cal["schema"] == calibration.SCHEMA
    pv = cal["provenance"]
    assert pv["model"]["sha256"] == sha256_file(thin_source) and pv["seeds"] == [1] and pv["holdout_seeds"] == [7]
    assert pv["comfyui"]["version"] == "0.3.75" and pv["workflow"]["settings"]["steps"] >= 1
    # every Linear of the thin WAN 2.1 block recorded its inputs
    assert {"blocks.0.self_attn.q", "blocks.0.ffn.0", "blocks.0.ffn.2", "head.head", "text_embedding.0"} <= set(cal["layers"])
    for name, la in cal["layers"].items():
        assert la["calls"] >= 1 and la["count"] > 0, name
        assert la["amax"] >= la["p99.999"] >= la["p99.99"] >= la["p99.9"] >= la["p99"] > 0, name
        assert la["std"] > 0
        assert sum(b["calls"] for b in la["bins"]) == la["calls"]
        assert max(b["amax"] for b in la["bins"]) == la["amax"]
    ffn = cal["layers"]["blocks.0.ffn.0"]
    with SafetensorsFile(thin_source) as f:
        assert ffn["in_features"] == f.info("blocks.0.ffn.0.weight").shape[1]
    assert ffn["channels"]["amax_max_over_median"] > 1
    assert cal["bins"]["n"] == 3 and cal["runs"] == 1
    assert "calibrated" in stdout and str(out) in stdout


def test_same_seed_gives_the_same_json(calib, comfy_session, thin_source):
    _, _, cal, _ = calib
    pol = gate.load_policy()["plan"]
    settings = {k: pol[k] for k in ("steps", "cfg", "sampler", "scheduler", "cond_seed", "neg_seed")}
    settings["vae"] = comfy_session.vae()
    m = collect.collect(comfy_session, comfy_session.model(thin_source), workflow=Workflow.from_arg(None, None),
                        seeds=[1], sizes=[SIZE], settings=settings, bins=3)
    again = m.to_json(cal["percentiles"])
    assert again["layers"] == cal["layers"]


def test_sqnr_report_orders_the_policies(calib):
    d, _, cal, stdout = calib
    assert (d / "calib.samples.safetensors").is_file()
    for fmt in ("fp8", "nvfp4"):
        med = cal["sqnr"]["formats"][fmt]["median_db"]
        assert set(med) >= {"weight-only", "none", "calibrated-amax", "calibrated-p99.9", "weight-derived", "unit"}
        # weight-only is the ceiling; weight-derived input scales clip and lose far more than calibrated ones
        assert med["weight-only"] >= med["calibrated-amax"]
        assert med["calibrated-amax"] > med["weight-derived"] + 3
    assert "per-layer output SQNR" in stdout and "weight-derived" in stdout


def test_calibrate_records_activation_samples_that_gptq_rounds_with(calib, thin_source, tmp_path):
    """`calibrate --act-samples` (the recorder for any model ComfyUI runs): the calibration runs' input rows of
    every Linear, at most --act-rows each, in the format convert --act-samples reads; GPTQ rounds with them and
    the file verifies against its source."""
    from harness.verify.record import sha256_file
    from quant.activations.samples import ActivationSamples
    from quant.convert import convert
    d, _, cal, stdout = calib
    acts = d / "acts.safetensors"
    pv = cal["provenance"]["act_samples"]
    assert pv["file"] == acts.name and pv["sha256"] == sha256_file(acts) and pv["layers"] == len(cal["layers"])
    assert 1 <= pv["rows_min"] <= pv["rows_max"] <= 48 and "activation samples" in stdout
    s = ActivationSamples(acts, 4096, 0)
    try:
        assert s.layers == set(cal["layers"])
        for name, la in cal["layers"].items():
            x = s.rows(name, la["in_features"])
            assert 1 <= x.shape[0] <= 48, name
            # rows of the same runs the statistics came from (bf16: amax within its rounding)
            assert 0 < float(x.abs().max()) <= la["amax"] * (1 + 2 ** -8), name
    finally:
        s.close()
    out = tmp_path / "gptq.safetensors"
    summ = convert(thin_source, out, "nvfp4", rounding="gptq", act_samples=acts)
    assert summ.rounding.startswith("gptq"), summ.rounding       # gptq refuses a layer without recorded rows
    rc, _, err = run_main("verify", out, "--source", thin_source)
    assert rc == 0, err


@pytest.fixture(scope="module")
def converted(calib, thin_source):
    from quant.convert import convert
    d, path, _, _ = calib
    out = {}
    for fmt in ("fp8", "nvfp4"):
        out[f"{fmt}-cal"] = d / f"{fmt}_cal.safetensors"
        convert(thin_source, out[f"{fmt}-cal"], fmt, act_stats=path)
        out[f"{fmt}-none"] = variants.make(out[f"{fmt}-cal"], d / f"{fmt}_none.safetensors", "none")
        out[f"{fmt}-weight"] = variants.make(out[f"{fmt}-cal"], d / f"{fmt}_weight.safetensors", "weight-derived")
    out["fp8-fpmm"] = variants.make(out["fp8-cal"], d / "fp8_fpmm.safetensors", "fpmm")
    return out


def _scalars(path):
    with SafetensorsFile(path) as f:
        meta = json.loads(f.metadata["_quantization_metadata"])["layers"]
        vals = {k[: -len(".input_scale")]: float(f.get(k)) for k in f.keys() if k.endswith(".input_scale")}
    return meta, vals


def test_convert_writes_calibrated_input_scales(calib, converted, thin_source, tmp_path):
    from quant.convert import convert
    _, path, cal, _ = calib
    for fmt in ("fp8", "nvfp4"):
        meta, vals = _scalars(converted[f"{fmt}-cal"])
        assert vals and set(vals) == set(meta)
        for layer, conf in meta.items():
            full = formats.get("nvfp4" if conf["format"] == "nvfp4" else "fp8").full_scale
            assert vals[layer] == pytest.approx(cal["layers"][layer]["amax"] / full, rel=1e-6)
            assert "full_precision_matrix_mult" not in conf          # fp8 drops it once calibrated
    p = tmp_path / "p.safetensors"
    convert(thin_source, p, "fp8", act_stats=path, percentile=99.9, margin=1.5, keep_fpmm=True)
    meta, vals = _scalars(p)
    assert all(c.get("full_precision_matrix_mult") is True for c in meta.values())
    for layer, v in vals.items():
        assert v == pytest.approx(cal["layers"][layer]["p99.9"] * 1.5 / 448, rel=1e-6)


def test_convert_calibration_errors_are_one_line(calib, thin_source, tmp_path):
    _, path, cal, _ = calib
    out = tmp_path / "o.safetensors"
    rc, _, err = run_main("convert", thin_source, "-f", "fp8", "--act-stats", path, "--percentile", "97.5", "-o", out)
    assert "not recorded" in one_error_line(rc, err) and not out.exists()
    other = tmp_path / "other.json"
    cal2 = dict(cal, layers={k: v for k, v in cal["layers"].items() if k != "blocks.0.ffn.0"})
    other.write_text(json.dumps(cal2))
    rc, _, err = run_main("convert", thin_source, "-f", "fp8", "--act-stats", other, "-o", out)
    assert "blocks.0.ffn.0" in one_error_line(rc, err) and not out.exists()
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(InputError, match="not a quantgate calibration"):
        calibration.load(bad)


def test_verify_calibration_flags_far_scales(calib, converted, cli):
    """(one subprocess: the real CLI's exit code and JSON)"""
    from harness.verify import verify
    _, path, _, _ = calib
    cal = calibration.load(path)

    def errors(rep):
        return [f for f in rep.findings.all() if f.rule == "input_scale.calibration" and f.severity == "error"]
    for key in ("fp8-cal", "nvfp4-cal", "fp8-fpmm"):
        rep = verify(converted[key], calibration=cal, header_only=True)
        assert rep.passed and not errors(rep), (key, rep.lines())
    # weight-derived: too SMALL (clips); fp8 without policy runs at 1.0: too LARGE
    for key, word in (("nvfp4-weight", "SMALL"), ("fp8-weight", "SMALL"), ("fp8-none", "LARGER")):
        rep = verify(converted[key], calibration=cal, header_only=True)
        assert not rep.passed and errors(rep) and word in errors(rep)[0].message, key
    r = cli("verify", converted["fp8-none"], "--calibration", path, "--header-only", "--json")
    rep = json.loads(r.stdout)
    assert r.returncode == 1
    row = rep["calibration"]["layers"]["blocks.0.ffn.0"]
    assert row["effective"].startswith("unit scale 1.0") and row["ratio"] > 8 and row["ok"] is False


def test_activation_policy_comes_from_the_candidate(converted):
    p = emulation.activation_policy(converted["nvfp4-cal"])
    kinds = emulation.describe(p)
    assert kinds.get("nvfp4 static input_scale", 0) >= 1 and kinds.get("fp8 static input_scale", 0) >= 1
    assert emulation.activation_policy(converted["fp8-fpmm"]) is None          # weight-only: no activation path
    assert set(emulation.describe(emulation.activation_policy(converted["fp8-none"]))) == {"fp8 unit scale 1.0"}
    dyn = emulation.describe(emulation.activation_policy(converted["nvfp4-none"]))
    assert dyn.get("nvfp4 dynamic scale", 0) >= 1


@pytest.fixture(scope="module")
def emulated_gate(comfy_session, thin_source, converted, calib):
    d = calib[0]
    pol = gate.load_policy()
    pol["plan"] = dict(pol["plan"], seeds=[1], sizes=[list(SIZE)])
    cands = [(k, converted[k]) for k in ("nvfp4-cal", "nvfp4-weight", "fp8-cal", "fp8-weight", "fp8-fpmm")]
    return gate.run_gate(comfy_session, thin_source, cands, policy=pol, work_dir=d)


def _c(rec, label):
    return next(c for c in rec["candidates"] if c["label"] == label)


def test_weight_derived_scales_fail_on_the_emulated_render_alone(emulated_gate):
    for label in ("nvfp4-weight", "fp8-weight"):
        c = _c(emulated_gate, label)
        assert c["verify"] is None                                # no format gate: the render decides
        assert c["activations"]["emulated"] is True
        assert c["activations"]["min_ssim_weight_only"] >= c["threshold"]      # weight-only looks fine ...
        assert c["verdict"] == "fail" and c["min_ssim"] < c["threshold"]       # ... activations do not
        assert any("activations emulated" in r and "weight-only render passes" in r for r in c["reasons"])


def test_calibrated_files_pass_emulated_and_weight_only_is_not_emulated(emulated_gate):
    c = _c(emulated_gate, "fp8-cal")
    assert c["activations"]["emulated"] and c["verdict"] == "pass", c["reasons"]
    # NVFP4 activations (4-bit) cost SSIM even when calibrated; far less than weight-derived scales
    n, w = _c(emulated_gate, "nvfp4-cal"), _c(emulated_gate, "nvfp4-weight")
    assert n["activations"]["emulated"] and n["min_ssim"] > w["min_ssim"] + 0.03
    assert n["min_ssim"] > n["activations"]["min_ssim_weight_only"] - 0.06
    f = _c(emulated_gate, "fp8-fpmm")
    assert f["activations"] == {"emulated": False} and f["verdict"] == "pass"
    rs = [r for r in emulated_gate["renders"] if r.get("candidate") == "nvfp4-cal"]
    assert rs and all(r["activations"] == "emulated" and 0 < r["weight_only"]["ssim"] <= 1 for r in rs)
    assert not any("weight_only" in r for r in emulated_gate["renders"] if r.get("candidate") == "fp8-fpmm")


def test_report_shows_weight_only_and_emulated(emulated_gate, calib, tmp_path):
    from harness.activations.sqnr import html_section
    from harness.render.report import write_report
    rp, gj = write_report(emulated_gate, tmp_path, extra_sections=[html_section(calib[2]["sqnr"])])
    html = rp.read_text()
    assert "activations emulated" in html and "weight-only" in html
    assert "output SQNR on held-out activations" in html and "<th>weight-derived</th>" in html
    g = json.loads(gj.read_text())
    assert _c(g, "nvfp4-weight")["activations"]["layers"]


def test_emulation_matches_comfy_kitchen_rounding():
    """The node's fake-quant is kitchen's quantize+dequantize: fp8 clips at +-448*scale, NVFP4 keeps
    16-element blocks on the e2m1 grid times an e4m3 block scale."""
    from harness.custom_nodes.quantgate_calibration import FAKE
    x = torch.linspace(-600, 600, 64).reshape(2, 32)
    y = FAKE["fp8"](x, None)
    assert float(y.abs().max()) == 448.0 and torch.allclose(y[:, 10:22], x[:, 10:22], rtol=0.07)
    z = FAKE["nvfp4"](x, None)
    assert z.shape == x.shape and float((z - x).abs().max()) < 0.2 * 600
    zs = FAKE["nvfp4"](x, 600 / 2688 / 64)          # a static scale 64x too small clips hard
    assert float(zs.abs().max()) < 0.1 * 600
    assert math.isclose(float(FAKE["fp8"](torch.tensor([[3.0, -5.0]]), 1 / 64).abs().max()), 5.0, rel_tol=0.07)


def test_calibrated_reference_model_passes_plain_verify(tmp_path):
    """A correctly calibrated file of the trained reference model (cross-attention inputs 0.04-0.19, others
    up to ~10) must not be rejected by header-only magnitude guesses: they are warnings, --strict makes them
    errors, and --calibration confirms them."""
    import json
    from harness.render import models
    from quant.convert import convert
    src = models.reference_model()
    from quant.safetensors_io import read_header
    names = [n[: -len(".weight")] for n in read_header(src).tensors if n.endswith(".weight")]
    # a per-layer calibration where cross-attention inputs are tiny and the rest are O(1..10), as measured
    layers = {n: {"amax": (0.05 if "cross_attn" in n else 6.0)} for n in names if ".blocks." in f".{n}" and
              any(k in n for k in ("attn.q", "attn.k", "attn.v", "attn.o", "ffn.0", "ffn.2"))}
    amax = {n: v["amax"] for n, v in layers.items()}
    out = tmp_path / "cal_nvfp4.safetensors"
    convert(src, out, "nvfp4", input_scales=amax, force=True)
    from tests._inproc import run_main
    rc, o, e = run_main("verify", str(out), "--source", str(src))
    assert rc == 0, o + e
    assert "input_scale.implausible" in o + e                    # the guess is still reported...
    rc, o, e = run_main("verify", str(out), "--source", str(src), "--strict")
    assert rc == 1                                               # ...and --strict fails on it
