"""Qwen-Image and Qwen-Image-Edit through the real embedded ComfyUI: the real-width files of the tiny
references load by ComfyUI's own detection into its QwenImage class without a load warning, draw what
they were trained to draw (the server's render is the core's in-process sample, decoded), the edit
model's reference image changes what is drawn, and the render gate passes fp8 and fails each family's
planted defect (Qwen: img_mlp/txt_mlp of block 0 swapped; Edit: img_in misquantized).

A render of the 3072-wide model takes 30-40 s on this shared 2-core box (fp8: ~70 s), so each gate
renders one seed at one size (baseline, repeat, control, one render per candidate), the planted defects
are made from the bf16 source, and activations are not emulated here (the demo renders every format
with its planted defect made from the fp8 file)."""
from __future__ import annotations

import numpy as np
import pytest

from harness.render import score
from harness.render.workflow import Workflow
from harness.train import registry

# real renders of the 3072-wide model / the expert pair in ComfyUI: minutes on a shared 2-core CPU
pytestmark = pytest.mark.slow


def _policy():
    from harness.render.gate import load_policy
    pol = load_policy()
    pol["plan"].update(seeds=[1], sizes=[[64, 64]])
    return pol


def _gate(session, name, planted_fn, tmp_path_factory, good: bool = True):
    """One gate run: the source, its fp8 conversion (``good``) and the planted defect made from the bf16
    source (an fp8 render of the 3072-wide model costs twice a bf16 one on a CPU)."""
    from harness.render.gate import run_gate
    from harness.verify.record import run_verify
    from quant.convert import convert
    m = registry.get(name)
    src = registry.sources(name)["model"]
    work = tmp_path_factory.mktemp(m.stem)
    cands = []
    if good:
        fp8 = work / f"{m.stem}_fp8.safetensors"
        convert(src, fp8, "fp8", force=True, comfy_version=session.version)
        cands.append(("fp8", fp8))
    cands.append(("planted", planted_fn(src, work / f"{m.stem}_PLANTED.safetensors")))
    return run_gate(session, src, cands, policy=_policy(), workflow=Workflow.from_arg(m.template, None),
                    work_dir=work, verify_fn=run_verify, emulate=False)


def _expected(name, seed=1, size=(64, 64), ref=None):
    """The core's in-process sample (workflow sampler) decoded by ComfyUI's TAEHV with the analytic
    decoder: what the server must render."""
    import torch
    from harness.train import latent, qwen_tiny, tiny_model
    m = qwen_tiny.load_model(registry.weights(name)[0])
    z = qwen_tiny.sample(m, 1, seed, size[1] // 8, size[0] // 8, 6, ref=ref)
    tiny_model._comfy()
    from comfy.taesd.taehv import TAEHV
    t = TAEHV(latent_channels=16, latent_format=None, show_progress_bar=False)
    t.load_state_dict(latent.taehv_decoder([(k, tuple(v.shape), str(v.dtype)) for k, v in t.state_dict().items()]))
    lat = z * torch.tensor(latent.WAN21_STD).view(1, -1, 1, 1, 1) + torch.tensor(latent.WAN21_MEAN).view(1, -1, 1, 1, 1)
    with torch.no_grad():
        img = t.decode(lat)[:, :, -1]
    return (img[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def qwen_record(comfy_session, tmp_path_factory):
    from harness.fixtures.planted import family_defects as fd
    return _gate(comfy_session, "qwen-image-tiny", lambda a, b: fd.qwen_mlps_swapped(a, b, 0), tmp_path_factory)


def test_qwen_loads_by_detection_and_draws_the_core(qwen_record):
    """No load warning for the 3072-wide file; the server's render (ComfyUI's QwenImage with 24 heads)
    is the in-process render of the 1-head core (SSIM >= 0.98) and is likeliest under class 1's colours."""
    from harness.train.colour import class_models, likeliest_class
    assert qwen_record["source"]["load_warnings"] == []
    img = qwen_record["_images"]["baseline"][(1, 64, 64)]
    assert score.ssim(img, _expected("qwen-image-tiny")) >= 0.98
    assert likeliest_class(img, class_models(64, 64)) == 1


def test_qwen_gate_passes_fp8_and_fails_swapped_mlps(qwen_record):
    by = {c["label"]: c for c in qwen_record["candidates"]}
    assert by["fp8"]["verdict"] == "pass", by["fp8"]["reasons"]
    bad = by["planted"]
    assert bad["verdict"] == "fail" and bad["load_warnings"] == []     # silent: ComfyUI loads it cleanly
    assert bad["min_ssim"] < bad["threshold"], bad["reasons"]
    assert qwen_record["control"]["pass"] and qwen_record["repeat"]["identical"]


@pytest.fixture(scope="module")
def edit_record(comfy_session, tmp_path_factory):
    from harness.fixtures.planted import family_defects as fd
    return _gate(comfy_session, "qwen-image-edit-tiny", fd.edit_img_in_misquantized, tmp_path_factory, good=False)


def _box_centre(img, colour: int):
    """Centroid (x, y) of the pixels within 0.25 of ``colour`` inverted (what the edit draws for the
    reference's box)."""
    want = 1.0 - np.array([(colour >> 16) & 255, (colour >> 8) & 255, colour & 255]) / 255.0
    d = np.sqrt(((np.asarray(img, dtype=np.float64) / 255.0 - want) ** 2).sum(-1))
    ys, xs = np.nonzero(d < 0.25)
    return (float(xs.mean()), float(ys.mean()), xs.size) if xs.size else (-1.0, -1.0, 0)


def test_edit_reference_decides_what_is_drawn(edit_record):
    """The baseline (seed 1) and the control (seed 1001) get different reference images from the shipped
    workflow; each render shows the reference's box in inverted colours where the reference has it (the
    centroid within 8 px), so the reference, through ComfyUI's ReferenceLatent, changes what is drawn."""
    from harness.train.registry import template_values
    imgs = {1: edit_record["_images"]["baseline"][(1, 64, 64)], 1001: edit_record["_images"]["control"][-1]}
    centres = {}
    for seed, img in imgs.items():
        v = template_values("qwen_image_edit_smoke", {"seed": seed, "width": 64, "height": 64})
        x, y, n = _box_centre(img, v["ref_fg"])
        want = (v["ref_x"] + v["ref_box"] / 2, v["ref_y"] + v["ref_box"] / 2)
        assert n > 0.1 * v["ref_box"] ** 2, (seed, n)
        assert np.hypot(x - want[0], y - want[1]) <= 8, (seed, (x, y), want)
        centres[seed] = (x, y)
    assert edit_record["control"]["pass"]


def test_edit_gate_fails_misquantized_img_in(edit_record):
    """img_in alone in fp8 under txt_in's weight scale (the rest bf16): loads silently, renders wrongly.
    (fp8 conversions of the edit model passing: the demo, --model qwen-image-edit-tiny; the same
    architecture's fp8 passes in test_qwen_gate_passes_fp8_and_fails_swapped_mlps.)"""
    bad = {c["label"]: c for c in edit_record["candidates"]}["planted"]
    assert bad["verdict"] == "fail" and bad["load_warnings"] == []
    assert bad["min_ssim"] < bad["threshold"], bad["reasons"]


def _same_on_both_versions(m: dict, good: list[str], planted: list[str]) -> None:
    """The matrix of ComfyUI 0.3.75 (embedded) and 0.33.0 (upstream): the source loads cleanly on each, every
    good file passes and every planted one fails by its render on each; the good files pass from 0.3.75."""
    assert [v["comfyui_version"] for v in m["versions"]] == ["0.3.75", "0.33.0"]
    for rec in m["_records"]:
        assert rec["source"]["load_warnings"] == [] and rec["control"]["pass"] and rec["repeat"]["identical"]
    for v in m["versions"]:
        by = {c["label"]: c for c in v["candidates"]}
        for lab in good:
            assert by[lab]["verdict"] == "pass", (v["comfyui_version"], by[lab]["reasons"])
        for lab in planted:
            assert by[lab]["verdict"] == "fail" and by[lab]["min_ssim"] < by[lab]["threshold"], (
                v["comfyui_version"], by[lab])
    assert m["oldest_passing"] == {**{g: "0.3.75" for g in good}, **{p: None for p in planted}}


def test_version_matrix_qwen_image(qwen_record, version_matrix, tmp_path_factory):
    """Qwen-Image's fp8 file and the swapped-MLP defect on ComfyUI 0.3.75 and 0.33.0: one seed at 64x64 (the
    embedded run is qwen_record's; upstream renders the same files, plan and workflow without the reference
    conversion, which would add a 3072-wide fp8 render)."""
    m = version_matrix(qwen_record, policy=_policy(), workflow=Workflow.from_arg("qwen_image_t2i_smoke", None),
                       work_dir=tmp_path_factory.mktemp("qwen-upstream"), emulate=False, compare_reference=False)
    assert all(v["candidates"][0]["min_ssim"] > 0.99 for v in m["versions"])     # the fp8 file, both versions
    _same_on_both_versions(m, ["fp8"], ["planted"])


def test_version_matrix_qwen_image_edit(edit_record, version_matrix, tmp_path_factory):
    """Qwen-Image-Edit (ReferenceLatent, the reference image's path) on ComfyUI 0.3.75 and 0.33.0: the source
    renders the edit cleanly on both and the misquantized img_in fails on both."""
    m = version_matrix(edit_record, policy=_policy(), workflow=Workflow.from_arg("qwen_image_edit_smoke", None),
                       work_dir=tmp_path_factory.mktemp("edit-upstream"), emulate=False, compare_reference=False)
    _same_on_both_versions(m, [], ["planted"])
