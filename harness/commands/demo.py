"""``quantgate demo``: the whole story on a tiny WAN 2.1 model in a few minutes on a CPU.

take the reference model (by default the tiny WAN 2.1 trained on procedural images, weights in the
repo; ``--reference random`` for the seeded random thin model) -> convert to fp8-legacy, fp8, nvfp4 -> verify each -> render each in
the embedded ComfyUI (NVFP4 as its dequantized twin on ComfyUI < 0.8) next to the source, with a
control and a planted silent-wrong file that ComfyUI renders without error -> report.html +
gate.json -> summary table. Exit 0 when every real format passes and the planted file fails.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from quant.errors import UsageError
from quant.formats import TARGETS as FORMATS  # every output format, from the registry
PLANTED = "planted-defect"      # every planted candidate's label starts with this
PLANT_FROM = "fp8"              # the family defects are made from this conversion (Qwen, A14B)
EXPERT = {"model": "high", "model_low": "low"}     # A14B: workflow slot -> expert
CALIBRATION_SEEDS = (11, 12, 13)   # A14B activation statistics: sampler seeds the gate does not render (1-3)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def register(sub):
    from harness.train.registry import DEFAULT, MODELS
    p = sub.add_parser("demo", help="build a tiny model, convert, verify, render in ComfyUI, write a report",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out/)")
    p.add_argument("--formats", default=None, metavar="LIST",
                   help="comma-separated formats to convert and render, or 'all' for every format quantgate writes "
                        "(default: the family's demo set; WAN 2.1: fp8-legacy, fp8, nvfp4 -- every format adds 6 "
                        "renders, each ~1-5 s on a quiet CPU)")
    p.add_argument("--no-planted", action="store_true", help="leave out the planted silent-wrong file(s)")
    p.add_argument("--model", choices=list(MODELS), default=DEFAULT,
                   help="the trained tiny reference model (one per family): " + "; ".join(
                       f"{m.name}: {m.draws}" for m in MODELS.values()) + f" (default {DEFAULT})")
    p.add_argument("--reference", choices=("trained", "random"), default=None,
                   help="with the default --model: 'trained' (default; the tiny WAN 2.1 trained on procedural "
                        "images, renders show a red disc on a gradient) or 'random' (seeded random weights, renders "
                        "are saturated blobs); default from $QUANTGATE_REFERENCE")
    p.set_defaults(func=run)


def _copy_source(ref, src) -> None:
    """The reference model copied to ``src`` through quantgate's one output path (never over an input, atomic)."""
    import shutil
    from quant.outputs import atomic_file, check_output
    check_output(src, [ref], overwrite=True, what="demo source copy")
    with atomic_file(src) as f, open(ref, "rb") as r:
        shutil.copyfileobj(r, f, 8 << 20)


# Qwen-Image renders the 3072-wide model: ~15-45 s a render on a shared 2-core CPU; one seed, one size
FAMILY_PLAN = {"qwen_image": {"seeds": [1], "sizes": [[64, 64]]},
               "qwen_image_edit": {"seeds": [1], "sizes": [[64, 64]]}}
# the formats a family's demo converts (None: every format of the registry). Qwen: fp8 (what the FP8
# converter's users A/B) and nvfp4 under the smart preset (below); fp8-legacy and the detected-preset nvfp4
# add ~2 renders of 30-70 s each (and the one-block nvfp4 file is all fp8), the int8/mxfp8/w4 formats more.
# A14B: the three formats every WAN demo has, per expert.
FAMILY_FORMATS = {"qwen_image": ("fp8",), "qwen_image_edit": ("fp8",),
                  "wan22_a14b": ("fp8-legacy", "fp8", "nvfp4"), "wan21": ("fp8-legacy", "fp8", "nvfp4")}


def _formats(arg: str | None, family: str) -> tuple:
    """--formats: None -> the family's demo set; 'all' -> every target format; else a checked list."""
    if arg is None:
        return tuple(FAMILY_FORMATS.get(family, FORMATS))
    if arg.strip() == "all":
        return tuple(FORMATS)
    got = tuple(f.strip() for f in arg.split(",") if f.strip())
    bad = [f for f in got if f not in FORMATS]
    if bad or not got:
        raise UsageError(f"--formats: unknown format(s) {', '.join(bad) or '(none given)'}; "
                         f"known: {', '.join(FORMATS)}, or 'all'")
    return got


def _planted(model, srcs: dict, mdir: Path, stem: str, by_fmt: dict) -> list:
    """(label, path, slot) of the family's planted defects (also made here; the Qwen and A14B ones from
    the ``PLANT_FROM`` conversion, ``by_fmt[format, slot]``)."""
    from harness.fixtures.planted import family_defects as fd
    from harness.fixtures.planted import render_defects as fixtures
    out = []
    if model.family == "wan21":
        planted = mdir / f"{stem}_fp8-legacy_PLANTED_no_head_scale.safetensors"
        fixtures.fp8_file(srcs["model"], planted, "legacy", drop_scales=("head.head",))
        _log(f"    {planted.name}  (legacy fp8 with head.head.scale_weight removed: loads and renders without "
             "a ComfyUI error, but wrong)")
        out.append((PLANTED, planted, "model"))
    elif model.family == "qwen_image":
        fp8 = by_fmt[PLANT_FROM, "model"]
        planted = mdir / f"{stem}_fp8_PLANTED_mlps_swapped.safetensors"
        fd.qwen_mlps_swapped(fp8, planted, block=0)
        _log(f"    {planted.name}  (the fp8 file with transformer_blocks.0 img_mlp and txt_mlp exchanged: same "
             "names and shapes, loads without a warning)")
        out.append((PLANTED + " mlps swapped", planted, "model"))
    elif model.family == "qwen_image_edit":
        fp8 = by_fmt[PLANT_FROM, "model"]
        planted = mdir / f"{stem}_fp8_PLANTED_img_in_misquantized.safetensors"
        fd.edit_img_in_misquantized(fp8, planted)
        _log(f"    {planted.name}  (the fp8 file with img_in -- the reference latent's way in -- quantized to fp8 "
             "under block 0's txt_mlp.net.0.proj weight scale: clipped to 22% of its range)")
        out.append((PLANTED + " img_in", planted, "model"))
    elif model.family == "wan22_a14b":
        fp8 = {slot: by_fmt[PLANT_FROM, slot] for slot in srcs}
        for (_, p, slot), what in zip(fd.a14b_swapped(fp8["model"], fp8["model_low"]),
                                      ("experts swapped: low in high slot", "experts swapped: high in low slot")):
            out.append((f"{PLANTED} {what}", p, slot))
        _log("    experts swapped: the fp8 low-noise expert in the high-noise slot and the other way round")
        # each expert converted with the OTHER expert's statistics: its render does not show it on this pair
        # (benchmarks/results/cpu-a14b-foreign-*.json); the gate fails it by the calibration provenance
        for slot, other in (("model", "model_low"), ("model_low", "model")):
            e, o = EXPERT[slot], EXPERT[other]
            p = fd.a14b_foreign_input_scales(srcs[slot], mdir / f"{stem}_{e}_fp8_PLANTED_{o}_act_stats.safetensors",
                                             by_fmt["stats", other])
            out.append((f"{PLANTED} {e} with {o}'s input_scale", p, slot))
        _log("    each expert converted with the other expert's activation statistics (--allow-foreign-calibration: "
             "the file records whose they are)")
    return out


def _a14b_amax(srcs: dict) -> dict:
    from harness.train import a14b_tiny
    return a14b_tiny.activation_amax(a14b_tiny.load_model(srcs["model"]), a14b_tiny.load_model(srcs["model_low"]),
                                     seeds=CALIBRATION_SEEDS)


def _sources(args, model, mdir: Path):
    """(reference kind, file stem, slot -> the demo's copy of each source)."""
    import os
    from harness.render import models
    from harness.train import registry
    from quant.errors import UsageError
    if args.reference == "random" and model.name != registry.DEFAULT:
        raise UsageError(f"--reference random exists only for {registry.DEFAULT} (--model {model.name} is trained)")
    kind = models.reference_kind(args.reference) if model.name == registry.DEFAULT else "trained"
    os.environ[models.ENV] = kind              # the render session's VAE follows the same choice
    if kind == "random":
        stem = models.reference_arch(kind).replace("-", "_")
        _log("1/5 source: seeded random thin WAN 2.1 t2v (dim 256, 1 block; real tensor names)")
        srcs = {"model": models.reference_model(log=_log, kind=kind)}
    else:
        stem = model.stem
        _log(f"1/5 source: {model.describe}")
        srcs = registry.sources(model.name, log=_log)
    local = {}
    for slot, p in srcs.items():
        tag = f"_{EXPERT[slot]}" if len(srcs) > 1 else ""
        dst = mdir / f"{stem}{tag}_{'fp32' if 'fp32' in p.name else 'bf16'}.safetensors"
        _copy_source(p, dst)
        local[slot] = dst
    return kind, stem, local


def _convert_all(model, srcs: dict, mdir: Path, stem: str, target_comfy: str, formats, planted: bool) -> list:
    """(label, path, slot) of every conversion of the family's demo, planted defects last."""
    from quant.convert import convert
    cands, by_fmt = [], {}
    for fmt in formats:
        for slot, src in srcs.items():
            tag = "" if len(srcs) == 1 else f"_{EXPERT[slot]}"
            dst = mdir / f"{stem}{tag}_{fmt}.safetensors"
            # --comfy-version: on ComfyUI < 0.4 a scaled_fp8 file must scale every Linear (that ComfyUI
            # casts the Linears a preset keeps to fp8 without a scale)
            s = convert(src, dst, fmt, force=True, comfy_version=target_comfy)
            cands.append((fmt if len(srcs) == 1 else f"{fmt} {EXPERT[slot]}", dst, slot))
            by_fmt[fmt, slot] = dst
            _log(f"    {dst.name}  {dst.stat().st_size / 1e6:.1f} MB  ({', '.join(f'{v} {k}' for k, v in s.layers.items())})")
    if model.family in ("qwen_image", "qwen_image_edit"):
        # the Qwen presets keep the first and last block in fp8 under NVFP4, so with one block the nvfp4
        # file has no NVFP4 layer: the smart preset puts the block's Linears in NVFP4 (twin + emulation)
        dst = mdir / f"{stem}_nvfp4_smart.safetensors"
        s = convert(srcs["model"], dst, "nvfp4", preset="smart", force=True, comfy_version=target_comfy)
        cands.append(("nvfp4 smart", dst, "model"))
        _log(f"    {dst.name}  {dst.stat().st_size / 1e6:.1f} MB  ({', '.join(f'{v} {k}' for k, v in s.layers.items())}; "
             "smart preset: the one block's Linears in NVFP4)")
    if model.family == "wan22_a14b":     # calibrated fp8: each expert with its own activation statistics
        from harness.fixtures.planted import family_defects as fd
        amax = _a14b_amax(srcs)
        for slot, src in srcs.items():
            e = EXPERT[slot]
            stats = by_fmt["stats", slot] = fd.a14b_statistics(src, amax[e], mdir / f"{stem}_{e}_act_stats.json",
                                                               seeds=CALIBRATION_SEEDS)
            dst = mdir / f"{stem}_{e}_fp8_calibrated.safetensors"
            convert(src, dst, "fp8", force=True, comfy_version=target_comfy, act_stats=str(stats))
            cands.append((f"fp8+input_scale {e}", dst, slot))
            _log(f"    {dst.name}  (fp8 --act-stats {stats.name}: input_scale from the {e}-noise expert's own "
                 "activations, recorded in process)")
    if planted:
        cands += _planted(model, srcs, mdir, stem, by_fmt)
    return cands


def _expectation(record: dict) -> tuple[bool, list]:
    """(every real format passes and every planted file fails, the planted candidates)."""
    real = [c for c in record["candidates"] if not c["label"].startswith(PLANTED)]
    plant = [c for c in record["candidates"] if c["label"].startswith(PLANTED)]
    return all(c["verdict"] == "pass" for c in real) and all(c["verdict"] == "fail" for c in plant), plant


def run(args) -> int:
    from harness.commands.gate import print_summary
    from harness.comfy.server import comfy_version, embedded_source
    from harness.render.gate import load_policy, run_gate
    from harness.render.report import write_report
    from harness.render.session import open_session
    from harness.render.workflow import Workflow
    from harness.train import registry
    from harness.verify.record import run_verify
    t0 = time.monotonic()
    model = registry.get(args.model)
    formats = _formats(args.formats, model.family)      # a bad --formats fails before any work
    out = Path(args.out)
    mdir = out / "models"
    mdir.mkdir(parents=True, exist_ok=True)
    timings = {}
    kind, stem, srcs = _sources(args, model, mdir)

    target_comfy = comfy_version(embedded_source())
    left = [f for f in FORMATS if f not in formats]
    _log(f"2/5 convert: {', '.join(formats)} (for ComfyUI {target_comfy}, the embedded server)"
         + (f"; not in this family's demo: {', '.join(left)}" if left else ""))
    t = time.monotonic()
    cands = _convert_all(model, srcs, mdir, stem, target_comfy, formats, not args.no_planted)
    timings["convert_s"] = round(time.monotonic() - t, 2)

    _log("3/5 verify (format gate)")
    t = time.monotonic()
    ver = {}
    for label, path, slot in cands:
        if str(path) not in ver:
            ver[str(path)] = run_verify(path, srcs[slot])
        _log(f"    {label:<15} {ver[str(path)]['summary']}")
    timings["verify_s"] = round(time.monotonic() - t, 2)

    _log("4/5 render in ComfyUI")
    t = time.monotonic()
    policy = load_policy()
    if model.family in FAMILY_PLAN:
        policy["plan"].update(FAMILY_PLAN[model.family])
        _log(f"    plan for {model.family}: seeds {policy['plan']['seeds']}, sizes {policy['plan']['sizes']} "
             "(a render of the 3072-wide model takes tens of seconds on a CPU)")
    with open_session(log=_log, keep_log=out / "comfyui.log") as session:     # temp base dir, removed after
        record = run_gate(session, srcs["model"], cands, policy=policy, work_dir=mdir,
                          workflow=Workflow.from_arg(model.template, None),
                          companions={k: v for k, v in srcs.items() if k != "model"},
                          verify_fn=lambda p, s: ver[str(p)], log=_log)
    timings["render_s"] = round(time.monotonic() - t, 2)

    _log("5/5 report")
    ok, plant = _expectation(record)
    record["demo"] = {"model": model.name, "family": model.family, "draws": model.draws, "formats_left_out": left,
                      "planted": [c["label"] for c in plant] if not args.no_planted else None, "timings": timings,
                      "reference": kind, "wall_s": round(time.monotonic() - t0, 2),
                      "expectation": ("met: every format passes, every planted file fails" if ok else
                                      "NOT met: see the failing rows")}
    # the demo's verdict is its expectation (the planted files are meant to fail); the plain gate
    # verdict over all candidates is kept beside it
    record["gate_verdict"] = record["verdict"]
    record["verdict"] = "pass" if ok else "fail"
    what = "random thin WAN 2.1" if kind == "random" else model.name
    title = (f"quantgate demo: {what} in ComfyUI {record['comfyui']['version']} - "
             + ("every format passes, the planted defect is caught" if ok else "expectation NOT met"))
    rp, gj = write_report(record, out, title=title)
    print()
    print_summary(record)
    if plant:
        print(f"  ({', '.join(c['label'] for c in plant)}: expected to FAIL -- the gate catches a file ComfyUI "
              "renders silently wrong)")
    print(f"\ndemo {'OK' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s "
          f"(convert {timings['convert_s']} s, verify {timings['verify_s']} s, render {timings['render_s']} s, "
          f"server start {record['timings']['server_start_s']} s)")
    print(f"report: {rp}\nrecord: {gj}")
    return 0 if ok else 1
