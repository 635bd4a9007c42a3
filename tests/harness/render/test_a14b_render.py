"""WAN 2.2 A14B's two experts through the real embedded ComfyUI with the shipped A14B workflow (two
UNETLoaders, two KSamplerAdvanced switching at the boundary): the pair draws its classes, the experts
are not interchangeable, and the render gate passes good conversions of each expert in its slot and
fails the planted defects: experts swapped (by the render) and one expert converted with the other's
activation statistics (by the calibration provenance the file records: its render does not show it on this
pair, see harness.fixtures.planted.family_defects.a14b_foreign_input_scales). Each slot is held to its own
reference conversion. The same files on the upstream ComfyUI 0.33.0: the version matrix."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.render import score
from harness.render.workflow import Workflow
from harness.train import a14b_tiny, registry

# real renders of the 3072-wide model / the expert pair in ComfyUI: minutes on a shared 2-core CPU
pytestmark = pytest.mark.slow

SETTINGS = dict(steps=6, cfg=1.0, sampler="euler", scheduler="simple", neg_seed=2)
SIZE = (96, 64)


def _policy():
    from harness.render.gate import load_policy
    pol = load_policy()
    pol["plan"].update(seeds=[1], sizes=[[64, 64]])
    return pol


@pytest.fixture(scope="module")
def pair(comfy_session, tmp_path_factory):
    s = comfy_session
    srcs = registry.sources(a14b_tiny.NAME)
    names = {k: s.model(p) for k, p in srcs.items()}
    wf = Workflow.from_arg("wan22_a14b_t2v_smoke", None)
    vae = s.vae()
    out = {}
    for cond in (1, 2, 3):
        vals = dict(SETTINGS, vae=vae, cond_seed=cond, model_low=names["model_low"])
        out[cond] = s.client.run(wf.build(names["model"], 1, *SIZE, vals, "a14b"), timeout=300)
    swapped = dict(SETTINGS, vae=vae, cond_seed=1, model_low=names["model"])
    out["swapped"] = s.client.run(wf.build(names["model_low"], 1, *SIZE, swapped, "a14b-sw"), timeout=300)
    return srcs, out


def test_the_pair_draws_its_classes_without_load_warnings(pair):
    """ComfyUI loads both experts without a missing/unexpected key; conditionings 1 (disc) and 2 (stripes)
    render likeliest under their own class's colour histogram (training images), and of the three renders
    the one conditioned on 3 (boxes on grey) is the likeliest under class 3's histogram. (Class 3 itself is
    weakly learned: measured in the server 2026-12-07, its render was likelier under class 2's histogram
    than under class 3's; in process, coarse decode, class 3 won by 0.2-0.3 nats.)"""
    from harness.train.colour import class_models, likeliest_class, log_likelihood
    models = class_models()
    _, r = pair
    img = {c: r[c].images[0][1] for c in (1, 2, 3)}
    for c in (1, 2, 3):
        assert not r[c].load_warnings
    for c in (1, 2):
        assert likeliest_class(img[c], models) == c
    ll3 = {c: log_likelihood(img[c], models[3]) for c in (1, 2, 3)}
    assert max(ll3, key=ll3.get) == 3, ll3


def test_swapped_experts_draw_something_else(pair):
    """The low-noise expert before the switch and the high-noise one after: far from the right render
    (SSIM below the control bound of the shipped policy, 0.9) and less likely under the class's colours."""
    from harness.train.colour import class_models, log_likelihood
    m1 = class_models()[1]
    _, r = pair
    good, bad = r[1].images[0][1], r["swapped"].images[0][1]
    assert score.ssim(good, bad) < 0.9
    assert log_likelihood(bad, m1) < log_likelihood(good, m1)


FOREIGN = {"high": "PLANTED high with the low expert's input_scale", "low": "PLANTED low with the high expert's input_scale"}


@pytest.fixture(scope="module")
def gate_record(comfy_session, pair, tmp_path_factory):
    from harness.fixtures.planted import family_defects as fd
    from harness.render.gate import run_gate
    from harness.verify.record import run_verify
    from quant.convert import convert
    s = comfy_session
    srcs, _ = pair
    work = tmp_path_factory.mktemp("a14b-gate")
    amax = a14b_tiny.activation_amax(a14b_tiny.load_model(srcs["model"]), a14b_tiny.load_model(srcs["model_low"]),
                                     seeds=(1,), sizes=((8, 8),))
    slot = {"high": "model", "low": "model_low"}
    stats = {e: fd.a14b_statistics(srcs[slot[e]], amax[e], work / f"stats-{e}.json", seeds=(1,)) for e in slot}
    fp8 = {}
    for e in ("high", "low"):
        fp8[slot[e]] = work / f"{e}_fp8.safetensors"
        convert(srcs[slot[e]], fp8[slot[e]], "fp8", force=True, comfy_version=s.version, act_stats=str(stats[e]))
    foreign = [(FOREIGN[e], fd.a14b_foreign_input_scales(srcs[slot[e]], work / f"{e}_fp8_PLANTED_{o}_stats.safetensors",
                                                        stats[o], comfy_version=s.version), slot[e])
               for e, o in (("high", "low"), ("low", "high"))]
    cands = [("fp8 high", fp8["model"], "model"), ("fp8 low", fp8["model_low"], "model_low"),
             *fd.a14b_swapped(fp8["model"], fp8["model_low"]), *foreign]
    return run_gate(s, srcs["model"], cands, policy=_policy(), workflow=Workflow.from_arg("wan22_a14b_t2v_smoke", None),
                    companions={"model_low": srcs["model_low"]}, work_dir=work, verify_fn=run_verify)


def test_gate_passes_each_good_expert_in_its_slot(gate_record):
    by = {c["label"]: c for c in gate_record["candidates"]}
    for lab in ("fp8 high", "fp8 low"):
        assert by[lab]["verdict"] == "pass", by[lab]["reasons"]
        assert by[lab]["activations"]["emulated"]            # judged with activations emulated
    assert by["fp8 low"]["slot"] == "model_low"
    assert gate_record["control"]["pass"] and gate_record["repeat"]["identical"]


def test_gate_fails_swapped_experts_by_their_renders(gate_record):
    by = {c["label"]: c for c in gate_record["candidates"]}
    for lab in ("PLANTED experts swapped (low in high slot)", "PLANTED experts swapped (high in low slot)"):
        c = by[lab]
        assert c["verdict"] == "fail"
        assert c["min_ssim"] < c["threshold"], c["reasons"]          # the render, not only verify


def test_gate_holds_the_low_slot_to_its_own_reference(gate_record):
    """The low-noise slot's candidates are compared with a reference conversion of the LOW expert's source,
    rendered in the low slot (not the high slot's reference, not none)."""
    by = {c["label"]: c for c in gate_record["candidates"]}
    refs = {r["label"]: r for r in gate_record["references"]}
    low_ref = by["fp8 low"]["reference"]
    assert low_ref["available"] and low_ref["pass"], low_ref
    assert refs[low_ref["label"]]["slot"] == "model_low"
    assert by["fp8 high"]["reference"]["label"] != low_ref["label"]
    assert refs[by["fp8 high"]["reference"]["label"]]["slot"] == "model"


def test_gate_fails_an_expert_calibrated_on_the_other_by_its_provenance(gate_record):
    """Each expert converted with the other expert's activation statistics (convert --act-stats OTHER
    --allow-foreign-calibration) fails: the file records whose statistics they were, and that is the other
    slot's source. (Its render does not show it on this pair: benchmarks/results/cpu-a14b-foreign-*.json.)
    The right files, converted with their own statistics, carry no such reason."""
    by = {c["label"]: c for c in gate_record["candidates"]}
    for e, other in (("high", "model_low"), ("low", "model")):
        c = by[FOREIGN[e]]
        assert c["verdict"] == "fail"
        assert any(f"calibrated on the {other} slot's source" in r for r in c["reasons"]), c["reasons"]
        assert any("calibration.foreign" in x for x in c["verify"]["findings"]), c["verify"]
    for lab in ("fp8 high", "fp8 low"):
        assert not any("calibrated on" in r for r in by[lab]["reasons"])


def test_version_matrix_a14b(gate_record, version_matrix, tmp_path_factory):
    """The A14B files on ComfyUI 0.3.75 (embedded) and 0.33.0 (upstream), same plan, workflow and options:
    the good experts pass and both swaps fail by their renders on each version."""
    srcs = registry.sources(a14b_tiny.NAME)
    m = version_matrix(gate_record, policy=_policy(), workflow=Workflow.from_arg("wan22_a14b_t2v_smoke", None),
                       companions={"model_low": srcs["model_low"]}, work_dir=tmp_path_factory.mktemp("a14b-up"))
    assert [v["comfyui_version"] for v in m["versions"]] == ["0.3.75", "0.33.0"]
    for rec in m["_records"]:
        assert rec["source"]["load_warnings"] == [] and rec["control"]["pass"] and rec["repeat"]["identical"]
    for v in m["versions"]:
        by = {c["label"]: c for c in v["candidates"]}
        for lab in ("fp8 high", "fp8 low"):
            assert by[lab]["verdict"] == "pass", (v["comfyui_version"], lab, by[lab]["reasons"])
        for lab in ("PLANTED experts swapped (low in high slot)", "PLANTED experts swapped (high in low slot)"):
            assert by[lab]["verdict"] == "fail" and by[lab]["min_ssim"] < by[lab]["threshold"], v["comfyui_version"]
    assert m["oldest_passing"]["fp8 high"] == m["oldest_passing"]["fp8 low"] == "0.3.75"


def test_gate_cli_source_low_judges_each_slot(cli, comfy_session, pair, tmp_path_factory):
    """`quantgate gate --source HIGH --source-low LOW CKPT --low CKPT_LOW`: the A14B workflow is picked
    by --source-low, CHECKPOINTs go into the high-noise slot and --low files into the low-noise slot.
    The right pairing exits 0; the same two fp8 files with the slots exchanged exit 1 on their renders."""
    import json

    from quant.convert import convert
    s = comfy_session
    srcs, _ = pair
    d = tmp_path_factory.mktemp("a14b-cli")
    fp8 = {}
    for slot, e in (("model", "high"), ("model_low", "low")):
        fp8[e] = d / f"a14b_cli_{e}_fp8.safetensors"
        convert(srcs[slot], fp8[e], "fp8", force=True, comfy_version=s.version)
    for p in (*srcs.values(), *fp8.values()):
        s.server.add_model(p, "diffusion_models", Path(p).name)
    s.vae()
    pol = d / "small.toml"
    # one seed, one size, the shipped plan's 6 steps and fp8 threshold (the demo measured the swap at seed 1 64x64:
    # low in the high slot 0.9618, high in the low slot 0.7543). Written here: tests._policies is shadowed by
    # ComfyUI's own `tests` package once ComfyUI is on sys.path.
    pol.write_text('[plan]\nseeds = [1]\nsizes = [[64, 64]]\nsteps = 6\ncfg = 1.0\nsampler = "euler"\n'
                   'scheduler = "simple"\ncontrol_seed_offset = 1000\nrender_timeout_s = 120\n'
                   '[thresholds]\nfp8 = 0.97\ndefault = 0.95\n[control]\nmax_ssim = 0.9\nmin_margin = 0.05\n')
    common = ("--source", srcs["model"], "--source-low", srcs["model_low"], "--comfy-url", s.client.url,
              "--policy", pol, "--no-verify", "--no-emulation")
    good = cli("gate", fp8["high"], "--low", fp8["low"], *common, "--out", d / "good", timeout=400)
    assert good.returncode == 0, good.stdout + good.stderr
    g = json.loads((d / "good" / "gate.json").read_text())
    assert g["workflow"]["name"] == "wan22_a14b_t2v_smoke"
    assert [c["slot"] for c in g["candidates"]] == ["model", "model_low"]
    assert set(g["source"]["companions"]) == {"model_low"}
    bad = cli("gate", fp8["low"], "--low", fp8["high"], *common, "--out", d / "bad", timeout=400)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    b = json.loads((d / "bad" / "gate.json").read_text())
    assert [c["verdict"] for c in b["candidates"]] == ["fail", "fail"]
    assert all(c["min_ssim"] < c["threshold"] for c in b["candidates"])
