"""``quantgate gate CKPT --source SRC``: verify + render in ComfyUI + SSIM + report (exit 0/1/2)."""
from __future__ import annotations

import sys
from pathlib import Path

from quant.errors import UsageError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def add_server_args(p) -> None:
    g = p.add_argument_group("ComfyUI server (default: start the embedded ComfyUI 0.3.75 on 127.0.0.1)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--comfy-url", metavar="URL", help="use this running ComfyUI (the files must be in its models)")
    x.add_argument("--comfy-root", metavar="PATH", action="append",
                   help="start a server from this ComfyUI checkout. Repeat it for a version matrix: the gate runs "
                        "on each and reports a verdict per version and the oldest version the file passes on. "
                        "'embedded' names the embedded 0.3.75, 'upstream' the current ComfyUI beside the checkout "
                        "(../shared/comfyui, with the venv ./qg setup builds for it)")
    g.add_argument("--comfy-python", metavar="PATH", action="append",
                   help="with --comfy-root PATH: the Python (of that checkout's environment) that runs it "
                        "(default: quantgate's own); one per checkout, in the same order")
    g.add_argument("--workflow", metavar="FILE", help="your API-format workflow, or a built-in one by name (default: "
                   "the built-in smoke render of the source's family: wan21_t2v_smoke, qwen_image_t2i_smoke, "
                   "wan22_a14b_t2v_smoke with --source-low; qwen_image_edit_smoke by name)")
    g.add_argument("--model-node", metavar="ID", help="id of the node in --workflow that loads the checkpoint")
    g.add_argument("--policy", metavar="TOML", help="thresholds and render plan (default: harness/policy.toml)")


def register(sub):
    p = sub.add_parser("gate", help="render gate: verify, render source vs candidate in ComfyUI, SSIM, report",
                       description="Render the source and the candidate with the same workflow and seeds in a real "
                                   "ComfyUI, score SSIM per render, check a control and ComfyUI's load warnings, "
                                   "and write report.html + gate.json. Exit 0 pass, 1 fail, 2 error.")
    p.add_argument("checkpoint", nargs="+", help="candidate checkpoint(s) (.safetensors, or .gguf: rendered as its "
                   "dequantized twin, decoded by gguf-py)")
    p.add_argument("--source", required=True, help="the source checkpoint the candidate was made from")
    p.add_argument("--source-low", metavar="SRC", help="WAN 2.2 A14B: the low-noise expert's source (--source is the "
                   "high-noise expert's); the A14B workflow renders the pair, the CHECKPOINTs go into the high-noise "
                   "slot and --low files into the low-noise slot, each judged against its own expert")
    p.add_argument("--low", metavar="CKPT", action="append", default=[],
                   help="with --source-low: a low-noise expert candidate (repeatable)")
    p.add_argument("--out", default="gate-report", metavar="DIR", help="where report.html and gate.json go (default: gate-report/)")
    p.add_argument("--no-verify", action="store_true", help="skip the format gate (quantgate verify)")
    p.add_argument("--ladder", action="store_true",
                   help="add the quality ladder (weight SQNR per layer: the GGUF candidates beside FP8 and NVFP4-mixed "
                        "made from the source, detected preset) to report.html")
    p.add_argument("--act-stats", "--calibration", dest="calibration", metavar="JSON",
                   help="activation statistics from `quantgate calibrate` (--calibration: the older name): verify holds each input_scale against it "
                        "(verify --calibration); its SQNR numbers (calibrate --report) go into report.html")
    p.add_argument("--no-emulation", action="store_true",
                   help="render weight-only only (by default a candidate that declares an activation path is also "
                        "rendered with its activations quantized as the format's native kernel would (fp8/NVFP4 input scales, int8 per-row after ConvRot, W4A4 int4, MXFP8 blocks), and judged "
                        "on that render)")
    p.add_argument("--no-reference", action="store_true",
                   help="judge on the absolute SSIM floor only (by default the gate also converts the source itself "
                        "-- round-to-nearest, the candidate's format and per-layer decisions, its activation path "
                        "with dynamic scales -- renders that reference, and fails a candidate clearly below it)")
    add_server_args(p)
    p.set_defaults(func=run)


def print_summary(record: dict, file=sys.stdout) -> None:
    rows = [("candidate", "format", "rendered as", "min SSIM", "weight-only", "threshold", "1-SSIM vs reference",
             "verify", "verdict")]
    for c in record["candidates"]:
        v = c.get("verify") or {}
        vt = "n/a" if not v.get("available") else ("pass" if v.get("passed") else "fail")
        act = c.get("activations") or {}
        wo = act.get("min_ssim_weight_only")
        rows.append((c["label"], c["format"], c["rendered_as"] + (" +act.emulated" if act.get("emulated") else ""),
                     "-" if c["min_ssim"] is None else f"{c['min_ssim']:.4f}", "-" if wo is None else f"{wo:.4f}",
                     f"{c['threshold']}", _vs_reference(c.get("reference")), vt, c["verdict"].upper()))
    ctl, rep = record["control"], record["repeat"]
    rows.append(("control", "-", f"seed {ctl['seed']}", f"{ctl['ssim']:.4f}", "-", f"<= {ctl['max_ssim']}", "-", "-",
                 "PASS" if ctl["pass"] else "FAIL"))
    rows.append(("repeat", "-", f"seed {rep['seed']} twice", f"{rep['ssim']:.4f}", "-", f">= {rep['min_ssim']}", "-",
                 "-", "PASS" if rep["pass"] else "FAIL"))
    w = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(str(x).ljust(w[j]) for j, x in enumerate(r)).rstrip(), file=file)
        if i == 0:
            print("  ".join("-" * n for n in w), file=file)
    for c in record["candidates"]:
        for reason in c["reasons"]:
            print(f"  {c['label']}: {reason}", file=file)
        for note in c.get("notes") or []:
            if note.startswith("warning:"):
                print(f"  {c['label']}: {note}", file=file)


def _vs_reference(ref: dict | None) -> str:
    if not ref or not ref.get("available"):
        return "-"
    return (f"{ref['mean_dissimilarity']:.4f} vs {ref['reference_mean_dissimilarity']:.4f} "
            f"(<= {ref['limit']:.4f})")


def family_workflow(source, source_low=None) -> str | None:
    """The built-in workflow for the source's model family (None: the default WAN 2.1 template)."""
    if source_low:
        return "wan22_a14b_t2v_smoke"
    from quant import arch
    from quant.safetensors_io import read_header
    if source is None or twin_is_gguf(source):
        return None
    return {"qwen_image": "qwen_image_t2i_smoke"}.get(arch.detect(list(read_header(source).tensors)) or "")


def twin_is_gguf(p) -> bool:
    from harness.render.twin import is_gguf
    return is_gguf(p)


def _version_of(t) -> str:
    from harness.comfy.server import check_comfy_root, comfy_version, prepare_embedded
    return comfy_version(prepare_embedded(log=_log) if t.root is None else check_comfy_root(t.root))


def run(args) -> int:
    from harness.render import matrix
    from harness.render.gate import load_policy, run_gate
    from harness.render.report import write_report
    from harness.render.session import open_session
    from harness.verify.record import run_verify
    from harness.render.workflow import Workflow
    if args.model_node and not args.workflow:
        raise UsageError("--model-node needs --workflow")
    from harness.render.gate import check_render_inputs
    from quant.outputs import check_output
    if args.low and not args.source_low:
        raise UsageError("--low needs --source-low (the low-noise expert's source)")
    check_render_inputs([args.source, *([args.source_low] if args.source_low else [])],
                        [*args.checkpoint, *args.low])          # before any server starts
    policy = load_policy(args.policy)
    wf = Workflow.from_arg(args.workflow or family_workflow(args.source, args.source_low), args.model_node)
    companions = {"model_low": args.source_low} if args.source_low else None
    cands = [*args.checkpoint, *((f"low-noise {Path(p).stem}", p, "model_low") for p in args.low)]
    out = Path(args.out)
    for name in ("gate.json", "report.html"):
        check_output(out / name, [args.source, *args.checkpoint], overwrite=True,
                     what="report" if name.endswith("html") else "gate record")
    verify_fn = None if args.no_verify else run_verify
    cal = None
    if args.calibration:
        from quant.activations.statistics import load as load_calibration
        cal = load_calibration(args.calibration)
        if verify_fn is not None:
            verify_fn = lambda ck, src: run_verify(ck, src, calibration=cal)  # noqa: E731
    if args.comfy_url:
        tgts = [None]
    else:
        tgts = matrix.targets(args.comfy_root, args.comfy_python)
    runs, subs = [], []
    sections = None
    if args.ladder:
        from harness.gguf import ladder
        from harness.render.twin import is_gguf
        lad = ladder.run(args.source, [c for c in args.checkpoint if is_gguf(c)], ("fp8", "nvfp4"), [None], ())
        print(lad.table(per_layer=False))
        sections = lambda d: [ladder.html_section(lad, d)]  # noqa: E731
    if cal is not None and cal.data.get("sqnr"):
        from harness.activations.sqnr import html_section
        before = sections
        sections = lambda d: [*(before(d) if before else []), html_section(cal.data["sqnr"], cal.path)]  # noqa: E731
    for t in tgts:
        name = "" if len(tgts) == 1 else f"comfyui-{_version_of(t)}"
        subs.append(name + (f"-{len([x for x in subs if x.startswith(name)]) + 1}" if name in subs else ""))
    from harness.comfy import temp_bases
    temp_bases.remove_stale(log=_log)           # left by a quantgate killed with SIGKILL
    for t, sub in zip(tgts, subs):
        sub = out / sub if sub else out
        with temp_bases.owned("gate") as tmp:
            with open_session(args.comfy_url, None if t is None else t.root, work_dir=Path(tmp) / "comfy", log=_log,
                              keep_log=sub / "comfyui.log", comfy_python=None if t is None else t.python) as session:
                if args.workflow:
                    session.check_nodes(wf.wf)
                record = run_gate(session, args.source, cands, policy=policy, workflow=wf,
                                  work_dir=Path(tmp), verify_fn=verify_fn, log=_log,
                                  emulate=not args.no_emulation, companions=companions,
                                  compare_reference=False if args.no_reference else None)
        rp, gj = write_report(record, sub, extra_sections=sections(sub) if sections else ())
        runs.append({"target": "url" if t is None else t.label, "version": record["comfyui"]["version"],
                     "record": record, "report": str(rp)})
        if len(tgts) > 1:
            print(f"\nComfyUI {record['comfyui']['version']} ({runs[-1]['target']}):")
        print_summary(record)
        print(f"\nverdict: {record['verdict'].upper()}   report: {rp}   record: {gj}")
    if len(tgts) == 1:
        return 0 if record["verdict"] == "pass" else 1
    m = matrix.summarize(runs)
    rp, gj = matrix.write(m, out)
    print(f"\nversion matrix ({len(runs)} ComfyUI versions):")
    matrix.print_summary(m)
    print(f"\nverdict: {m['verdict'].upper()} (pass = passes on every version)   report: {rp}   record: {gj}")
    return 0 if m["verdict"] == "pass" else 1
