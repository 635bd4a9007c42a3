"""convert's issue-25 levers end to end on the thin WAN 2.2 5B model: --rounding gptq and --scale-search write
files verify --source passes and that lower the output error on HELD-OUT activations against RTN (measured
here); --budget-bits stays within its bits and says why each layer got its format; learned rounding without
activation samples is refused with one line. Numbers come from seeded data in the test."""
import json
import math

import pytest
import torch

from harness.fixtures.synthetic_activations import activations
from quant.activations.samples import save_samples
from quant.convert import convert, make_plan
from quant.kernels import fp8 as _fp8
from quant.kernels import nvfp4 as _nv
from quant.safetensors_io import SafetensorsFile
from quant.sources import open_source

ROWS = 256


@pytest.fixture(scope="module")
def samples(thin_wan5b, tmp_path_factory):
    d = tmp_path_factory.mktemp("levers")
    with open_source(thin_wan5b) as src:
        plan = make_plan(src, None, "nvfp4")
    calib, held = {}, {}
    for i, dec in enumerate(plan.quantized()):
        draw = activations(dec.shape[1], seed=300 + i)
        calib[dec.layer], held[dec.layer] = draw(ROWS), draw(ROWS)
    save_samples(calib, d / "acts.safetensors")
    return d, d / "acts.safetensors", held


def _decode(f, layer, shape):
    if f"{layer}.weight_scale_2" in f.keys():
        return _nv.dequantize(f.get(f"{layer}.weight"), f.get(f"{layer}.weight_scale"),
                              f.get(f"{layer}.weight_scale_2"), shape)
    return _fp8.dequantize(f.get(f"{layer}.weight"), f.get(f"{layer}.weight_scale"))


def _pooled_output_db(path, source, held) -> float:
    sig = err = 0.0
    with SafetensorsFile(path) as f, SafetensorsFile(source) as s:
        for layer, x in held.items():
            w = s.get(f"{layer}.weight").float()
            e = x @ (_decode(f, layer, tuple(w.shape)) - w).T
            sig += float((x @ w.T).double().pow(2).sum())
            err += float(e.double().pow(2).sum())
    return 10 * math.log10(sig / err)


def test_gptq_and_scale_search_verify_and_beat_rtn_on_held_out(cli, thin_wan5b, samples):
    d, acts, held = samples
    files = {"rtn": [], "search": ["--scale-search", "mse"],
             "gptq": ["--rounding", "gptq", "--scale-search", "output", "--act-samples", acts]}
    db = {}
    for k, extra in files.items():
        out = d / f"{k}.safetensors"
        r = cli("convert", thin_wan5b, "-f", "nvfp4", "-o", out, "--json", *extra)
        assert r.returncode == 0, r.stderr
        if k != "rtn":
            assert json.loads(r.stdout)["rounding"] != "rtn"
            v = cli("verify", out, "--source", thin_wan5b)
            assert v.returncode == 0, v.stdout + v.stderr
        db[k] = _pooled_output_db(out, thin_wan5b, held)
    print("held-out output SQNR: " + ", ".join(f"{k} {v:.2f} dB" for k, v in db.items()))
    assert db["search"] > db["rtn"] and db["gptq"] > db["search"]


def test_budget_bits_stays_within_and_gives_reasons(thin_wan5b, samples):
    d, acts, held = samples
    s = convert(thin_wan5b, d / "b55.safetensors", "nvfp4", budget_bits=5.5, act_samples=None)
    b = s.budget
    assert b["bits_per_weight"] <= 5.5 and b["metric"] == "weight"
    assert all(v["reason"].startswith("--budget-bits 5.5") for v in b["layers"].values())
    assert set(b["counts"]) <= {"nvfp4", "fp8", "keep"} and "nvfp4" in b["counts"]
    lo = convert(thin_wan5b, d / "b46.safetensors", "nvfp4", budget_bits=4.6)
    assert lo.budget["bits_per_weight"] <= 4.6 and lo.bytes_out < s.bytes_out
    # the file holds what the allocation chose
    with SafetensorsFile(d / "b55.safetensors") as f:
        for layer, v in b["layers"].items():
            has_nv = f"{layer}.weight_scale_2" in f.keys()
            assert has_nv == (v["action"] == "nvfp4"), layer


@pytest.mark.parametrize("args, words", [
    (["--rounding", "learned"], "--rounding learned needs --act-samples"),
    (["--rounding", "gptq"], "--rounding gptq needs --act-samples"),
    (["--scale-search", "output"], "--scale-search output needs --act-samples"),
    (["-f", "fp8", "--budget-bits", "6"], "--budget-bits mixes NVFP4"),
    (["--budget-bits", "4"], "below NVFP4"),
])
def test_lever_options_errors_are_one_line(cli, thin_wan5b, tmp_path, args, words):
    fmt = [] if "-f" in args else ["-f", "nvfp4"]
    r = cli("convert", thin_wan5b, *fmt, *args, "-o", tmp_path / "o.safetensors")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr
    assert not (tmp_path / "o.safetensors").exists()


def test_gptq_fp8_layers_change_and_stay_on_the_grid(thin_wan5b, samples):
    """The default NVFP4-mixed preset keeps some layers FP8: gptq rounds those on the FP8 grid (RTN's scale)."""
    d, acts, held = samples
    convert(thin_wan5b, d / "r.safetensors", "nvfp4")
    convert(thin_wan5b, d / "g.safetensors", "nvfp4", rounding="gptq", act_samples=acts)
    n = 0
    with SafetensorsFile(d / "r.safetensors") as r, SafetensorsFile(d / "g.safetensors") as g:
        assert set(r.keys()) == set(g.keys())
        for layer in held:
            if f"{layer}.weight_scale_2" not in r.keys() and f"{layer}.weight_scale" in r.keys():
                n += 1
                assert torch.equal(r.get(f"{layer}.weight_scale"), g.get(f"{layer}.weight_scale"))
                assert g.get(f"{layer}.weight").dtype == torch.float8_e4m3fn
    assert n > 0                                               # the preset's fp8 layers were checked


def test_budget_preset_keeps_the_presets_own_size(cli, thin_wan5b, samples):
    """--budget-bits preset: the preset's own bits a weight (measured here from its plan), re-decided."""
    from quant.budget import stored_bytes
    d, acts, held = samples
    with open_source(thin_wan5b) as src:
        q = [x for x in make_plan(src, None, "nvfp4").quantized() if len(x.shape) == 2]
    own = 8.0 * sum(stored_bytes(x.action, x.shape, 2) for x in q) / sum(x.shape[0] * x.shape[1] for x in q)
    out = d / "bp.safetensors"
    r = cli("convert", thin_wan5b, "-f", "nvfp4", "--budget-bits", "preset", "--rounding", "gptq",
            "--scale-search", "output", "--act-samples", acts, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    b = json.loads(r.stdout)["budget"]
    numel = sum(x.shape[0] * x.shape[1] for x in q)
    assert abs(b["budget_bits"] - own) < 1e-9 and 8 * b["bytes"] <= own * numel + 1e-6 and b["metric"] == "output"
    r = cli("convert", thin_wan5b, "-f", "nvfp4", "--budget-bits", "lots", "-o", d / "x.safetensors")
    assert r.returncode == 2 and "'preset'" in r.stderr and not (d / "x.safetensors").exists()


def test_plan_shows_the_budget_decisions_convert_makes(cli, thin_wan5b, tmp_path):
    r = cli("plan", thin_wan5b, "-f", "nvfp4", "--budget-bits", "5.5", "--json")
    assert r.returncode == 0, r.stderr
    shown = {t["name"][: -len(".weight")]: t for t in json.loads(r.stdout)["tensors"]
             if t["reason"].startswith("--budget-bits 5.5")}
    s = convert(thin_wan5b, tmp_path / "b.safetensors", "nvfp4", budget_bits=5.5)
    assert shown and {k: v["action"] for k, v in shown.items()} == {k: v["action"] for k, v in s.budget["layers"].items()}


def test_act_samples_of_kept_layers_are_ignored_and_of_foreign_layers_refused(thin_wan5b, samples, tmp_path):
    """One recording of every Linear (`calibrate --act-samples`) serves any preset: rows of a layer the plan keeps
    are ignored; rows of a layer the model does not have mean the wrong file (one InputError naming it)."""
    from quant.errors import InputError
    _, acts, _ = samples
    with open_source(thin_wan5b) as src:
        plan = make_plan(src, None, "nvfp4")
        kept = next(d for d in plan.decisions if d.action == "keep" and len(d.shape) == 2 and d.name.endswith(".weight"))
    with SafetensorsFile(acts) as f:
        rows = {k[: -len(".input")]: f.get(k) for k in f.keys()}
    save_samples({**rows, kept.layer: torch.randn(8, kept.shape[1])}, tmp_path / "all.safetensors")
    s = convert(thin_wan5b, tmp_path / "ok.safetensors", "nvfp4", rounding="gptq", act_samples=tmp_path / "all.safetensors")
    assert s.rounding.startswith("gptq")
    save_samples({**rows, "blocks.999.nope": torch.randn(8, 16)}, tmp_path / "foreign.safetensors")
    with pytest.raises(InputError, match="blocks.999.nope"):
        convert(thin_wan5b, tmp_path / "bad.safetensors", "nvfp4", rounding="gptq",
                act_samples=tmp_path / "foreign.safetensors")
    assert not (tmp_path / "bad.safetensors").exists()


def test_budget_bits_offers_int8_for_a_comfyui_that_loads_it(cli, thin_wan5b, samples):
    """--budget-bits with --comfy-version >= int8_tensorwise's first version may give layers INT8 (per-row scales)
    instead of FP8 -- measured by the same output error -- and GPTQ rounds the NVFP4/FP8 ones while the INT8
    ones are rounded to nearest; the mixed file verifies against its source. Without --comfy-version, or for an
    older ComfyUI, or with learned rounding, the choices stay NVFP4 / FP8 / source precision."""
    from types import SimpleNamespace
    from quant import budget
    d, acts, held = samples
    out = d / "b6_int8.safetensors"
    s = convert(thin_wan5b, out, "nvfp4", budget_bits=6.0, rounding="gptq", act_samples=acts, comfy_version="0.33.0")
    b = s.budget
    assert b["bits_per_weight"] <= 6.0 and b["metric"] == "output"
    assert "int8" in b["counts"], b["counts"]
    assert all("int8" in v["reason"] for v in b["layers"].values())           # each reason lists its int8 dB
    with SafetensorsFile(out) as f:
        meta = json.loads(f.metadata["_quantization_metadata"])["layers"]
        for layer, v in b["layers"].items():
            if v["action"] == "int8":
                assert meta[layer]["format"] == "int8_tensorwise" and f.get(f"{layer}.weight").dtype == torch.int8
    r = cli("verify", out, "--source", thin_wan5b)
    assert r.returncode == 0, r.stderr
    old = convert(thin_wan5b, d / "b6_old.safetensors", "nvfp4", budget_bits=6.0, comfy_version="0.26.0")
    assert "int8" not in old.budget["counts"]
    req = lambda v, learned=False: SimpleNamespace(plan=SimpleNamespace(comfy_version=v),  # noqa: E731
                                                   rounding=SimpleNamespace(learned=learned))
    assert budget.offered_actions(req(None)) == budget.offered_actions(req("0.26.0")) == ("nvfp4", "fp8", "keep")
    assert "int8" in budget.offered_actions(req("0.27.0"))
    assert "int8" not in budget.offered_actions(req("0.33.0", learned=True))
