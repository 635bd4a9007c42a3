"""The nightly GPU renders (pytest -m gpu on the GPU box; the record is this run's --benchmark-json).

A real-size random-weight WAN 2.2 TI2V 5B (the real layout of quant.arch, 10 GB bf16) is generated on the
box, converted to each format on the GPU, and rendered in the embedded ComfyUI on CUDA: SSIM against the
bf16 render (run_gate), seconds per step, load time and peak VRAM per format go into the benchmark's
extra_info, so `quantgate nightly compare OLD NEW` can flag regressions between two nights.
"""
import os
import time
from pathlib import Path

import pytest
import torch

# QUANTGATE_NIGHTLY_CPU=1 dry-runs the suite on a CPU box with QUANTGATE_NIGHTLY_ARCH=wan22-ti2v-5b-thin
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(DEVICE == "cpu" and not os.environ.get("QUANTGATE_NIGHTLY_CPU"),
                                                  reason="needs a CUDA GPU")]

# the layout (harness.nightly.gpu.NIGHTLY_LAYOUTS, one per family): wan22-ti2v-5b (default), qwen-image,
# wan22-t2v-a14b (two experts, the A14B workflow); the record's extra_info says what was rendered and why
LAYOUT = os.environ.get("QUANTGATE_NIGHTLY_ARCH", "wan22-ti2v-5b")
ARCH = LAYOUT
# QUANTGATE_NIGHTLY_CASES=bf16,fp8 narrows a run (e.g. a short device lease); the default is every format
CASES = os.environ.get("QUANTGATE_NIGHTLY_CASES", "bf16,fp8-legacy,fp8,nvfp4").split(",")


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    from harness.nightly import gpu as N
    from harness.fixtures import synth
    from harness.render import gate
    from harness.render.workflow import Workflow, load
    from quant.convert import convert
    work = Path(os.environ.get("QUANTGATE_NIGHTLY_DIR") or tmp_path_factory.mktemp("nightly"))
    work.mkdir(parents=True, exist_ok=True)
    lay = N.nightly_layout(LAYOUT)
    t0 = time.monotonic()
    src = work / f"{ARCH}_bf16.safetensors"
    src_low = work / f"{ARCH}_low_bf16.safetensors"       # A14B: the low-noise expert (another seed)
    if not src.is_file():            # a nightly box keeps its generated source between runs (same seed, same bytes)
        synth.make_model(lay["arch"], src, seed=0, dtype=torch.bfloat16)
    if lay["experts"] == 2 and not src_low.is_file():
        synth.make_model(lay["arch"], src_low, seed=1, dtype=torch.bfloat16)
    gen_s = time.monotonic() - t0
    files = {"bf16": (src, None)}
    lows = []
    for fmt in CASES[1:]:
        t0 = time.monotonic()
        out = work / f"{ARCH}_{fmt}.safetensors"
        convert(src, out, fmt, device=DEVICE, force=True)      # converted afresh every night: that is under test
        files[fmt] = (out, time.monotonic() - t0)
        if lay["experts"] == 2:
            low = work / f"{ARCH}_low_{fmt}.safetensors"
            convert(src_low, low, fmt, device=DEVICE, force=True)
            lows.append((f"{fmt} low", low, "model_low"))
    srv, session = N.start_server(work, log=lambda m: print(m, flush=True))
    try:
        session.vae_latent_channels = lay["latent"]
        wf = Workflow(load(lay["workflow"]), source=lay["workflow"])
        companions = {"model_low": src_low} if lay["experts"] == 2 else None
        record = gate.run_gate(session, src, [(f, p) for f, (p, _) in files.items() if f != "bf16"] + lows,
                               policy=N.policy(), workflow=wf, work_dir=work, verify_fn=None,
                               log=lambda m: print(m, flush=True), companions=companions)
        settings = {k: N.policy()["plan"][k] for k in ("cfg", "sampler", "scheduler")}
        settings["vae"] = session.vae()
        if companions:
            settings["model_low"] = session.model(src_low)
        yield {"N": N, "session": session, "workflow": wf, "files": files, "record": record, "gen_s": gen_s,
               "settings": settings}
    finally:
        srv.stop()
        # the conversions and twins are made afresh each night; only the seeded source is kept
        for f in work.glob(f"{ARCH}_*.safetensors"):
            if f not in (src, src_low):
                f.unlink(missing_ok=True)


@pytest.mark.parametrize("fmt", CASES)
def test_nightly_render(nightly, fmt, benchmark):
    N, session, wf = nightly["N"], nightly["session"], nightly["workflow"]
    path, convert_s = nightly["files"][fmt]
    res = N.CaseResult(fmt, str(path), Path(path).stat().st_size, convert_s=None if convert_s is None else round(convert_s, 2))
    rec = nightly["record"]
    if fmt != "bf16":
        c = next(c for c in rec["candidates"] if c["label"] == fmt)
        ss = [r["ssim"] for r in rec["renders"] if r.get("candidate") == fmt]
        res.ssim_min, res.ssim_mean = c["min_ssim"], round(sum(ss) / len(ss), 5)
        res.rendered_as, res.verdict = c["rendered_as"], c["verdict"]
        res.notes += c["reasons"] + c.get("notes", [])
        render_path = path
        if c["rendered_as"] != "file":            # run_gate wrote the twin beside the work files
            render_path = Path(path).parent / f"{Path(path).stem}.dequantized-twin.safetensors"
            res.notes.append(f"ComfyUI {session.version} cannot load {fmt} on this GPU path: rendered as its "
                             "dequantized twin (bf16 weights), so speed and VRAM are the twin's, not NVFP4's")
    else:
        render_path = path
    sm = N.speed_and_memory(session, wf, render_path, nightly["settings"])
    for k, v in sm.items():
        setattr(res, k, v)
    name = session.model(render_path)
    benchmark.extra_info.update(res.extra_info())
    benchmark.extra_info.update(gpu=torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
                                comfyui=session.version, arch=ARCH, layout=N.nightly_layout(LAYOUT)["arch"],
                                layout_note=N.nightly_layout(LAYOUT)["note"],
                                source_generate_s=round(nightly["gen_s"], 2))
    # the benchmark's own timing: one full render of the policy's steps (load + sample + decode)
    benchmark.pedantic(N.timed_render, args=(session, wf, name, N.policy()["plan"]["steps"], nightly["settings"]),
                       rounds=N.REPEATS, iterations=1)
    # what must hold every night (not thresholds tuned to this run: the format limits of the render gate)
    assert res.s_per_step and res.s_per_step > 0
    if DEVICE == "cuda":
        assert res.peak_vram_mib and res.peak_vram_mib > 0
    if fmt != "bf16":
        assert res.ssim_min is not None and res.verdict is not None
