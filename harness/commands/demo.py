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

from quant.formats import TARGETS as FORMATS  # every output format, from the registry
PLANTED = "planted-defect"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def register(sub):
    p = sub.add_parser("demo", help="build a tiny model, convert, verify, render in ComfyUI, write a report",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo-out", metavar="DIR", help="output folder (default: demo-out/)")
    p.add_argument("--no-planted", action="store_true", help="leave out the planted silent-wrong file")
    p.add_argument("--reference", choices=("trained", "random"), default=None,
                   help="source model: 'trained' (default; the tiny WAN 2.1 trained on procedural images, "
                        "renders show a red disc on a gradient) or 'random' (seeded random weights, renders are "
                        "saturated blobs); default from $QUANTGATE_REFERENCE")
    p.set_defaults(func=run)


def _copy_source(ref, src) -> None:
    """The reference model copied to ``src`` through quantgate's one output path (never over an input, atomic)."""
    from quant.outputs import atomic_file, check_output
    check_output(src, [ref], overwrite=True, what="demo source copy")
    with atomic_file(src) as f, open(ref, "rb") as r:
        shutil.copyfileobj(r, f, 8 << 20)


def run(args) -> int:
    import shutil

    from harness.commands.gate import print_summary
    from harness.fixtures.planted import render_defects as fixtures
    from harness.render import models
    from harness.render.gate import load_policy, run_gate
    from harness.render.report import write_report
    from harness.render.session import open_session
    from harness.verify.record import run_verify
    t0 = time.monotonic()
    out = Path(args.out)
    mdir = out / "models"
    mdir.mkdir(parents=True, exist_ok=True)
    timings = {}

    import os
    kind = models.reference_kind(args.reference)
    os.environ[models.ENV] = kind              # the render session's VAE follows the same choice
    stem = models.reference_arch(kind).replace("-", "_")
    _log("1/5 source: " + ("tiny WAN 2.1 t2v trained on procedural images (dim 128, 6 blocks; real tensor names)"
                           if kind == "trained" else "seeded random thin WAN 2.1 t2v (dim 256, 1 block; real tensor names)"))
    src = mdir / f"{stem}_fp32.safetensors"
    _copy_source(models.reference_model(log=_log, kind=kind), src)

    from harness.comfy.server import comfy_version, embedded_source
    from quant.convert import convert
    target_comfy = comfy_version(embedded_source())
    _log(f"2/5 convert: {', '.join(FORMATS)} (for ComfyUI {target_comfy}, the embedded server)")
    t = time.monotonic()
    cands = []
    for fmt in FORMATS:
        dst = mdir / f"{stem}_{fmt}.safetensors"
        # --comfy-version: on ComfyUI < 0.4 a scaled_fp8 file must scale every Linear (that ComfyUI
        # casts the Linears a preset keeps to fp8 without a scale)
        s = convert(src, dst, fmt, force=True, comfy_version=target_comfy)
        cands.append((fmt, dst))
        _log(f"    {dst.name}  {dst.stat().st_size / 1e6:.1f} MB  ({', '.join(f'{v} {k}' for k, v in s.layers.items())})")
    if not args.no_planted:
        planted = mdir / f"{stem}_fp8-legacy_PLANTED_no_head_scale.safetensors"
        fixtures.fp8_file(src, planted, "legacy", drop_scales=("head.head",))
        cands.append((PLANTED, planted))
        _log(f"    {planted.name}  (legacy fp8 with head.head.scale_weight removed: loads and renders without "
             "a ComfyUI error, but wrong)")
    timings["convert_s"] = round(time.monotonic() - t, 2)

    _log("3/5 verify (format gate)")
    t = time.monotonic()
    ver = {}
    for label, path in cands:
        ver[str(path)] = v = run_verify(path, src)
        _log(f"    {label:<15} {v['summary']}")
    timings["verify_s"] = round(time.monotonic() - t, 2)

    _log("4/5 render in ComfyUI")
    t = time.monotonic()
    with open_session(log=_log, keep_log=out / "comfyui.log") as session:     # temp base dir, removed after
        record = run_gate(session, src, cands, policy=load_policy(), work_dir=mdir,
                          verify_fn=lambda p, s: ver[str(p)], log=_log)
    timings["render_s"] = round(time.monotonic() - t, 2)

    _log("5/5 report")
    record["demo"] = {"planted": PLANTED if not args.no_planted else None, "timings": timings, "reference": kind,
                      "wall_s": round(time.monotonic() - t0, 2)}
    real = [c for c in record["candidates"] if c["label"] != PLANTED]
    plant = [c for c in record["candidates"] if c["label"] == PLANTED]
    ok = all(c["verdict"] == "pass" for c in real) and all(c["verdict"] == "fail" for c in plant)
    record["demo"]["expectation"] = ("met: every format passes, the planted file fails" if ok else
                                     "NOT met: see the failing rows")
    # the demo's verdict is its expectation (the planted file is meant to fail); the plain gate
    # verdict over all candidates is kept beside it
    record["gate_verdict"] = record["verdict"]
    record["verdict"] = "pass" if ok else "fail"
    title = (f"quantgate demo: {'trained tiny' if kind == 'trained' else 'random thin'} WAN 2.1 in ComfyUI {record['comfyui']['version']} - "
             + ("every format passes, the planted defect is caught" if ok else "expectation NOT met"))
    rp, gj = write_report(record, out, title=title)
    print()
    print_summary(record)
    if plant:
        print(f"  ({PLANTED} is expected to FAIL: it proves the gate catches a file ComfyUI renders silently wrong)")
    print(f"\ndemo {'OK' if ok else 'FAILED'} in {time.monotonic() - t0:.1f} s "
          f"(convert {timings['convert_s']} s, verify {timings['verify_s']} s, render {timings['render_s']} s, "
          f"server start {record['timings']['server_start_s']} s)")
    print(f"report: {rp}\nrecord: {gj}")
    return 0 if ok else 1
