"""``quantgate calibrate SOURCE -o calib.json``: record every Linear's input statistics while a real
ComfyUI samples a normal workflow (the model is wrapped by quantgate's QGCalibrate node; ComfyUI is
not patched), and write them as an activation-statistics JSON for ``convert --act-stats``."""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from quant.errors import UsageError

DESCRIPTION = """\
Run the workflow once per seed (and size) in a real ComfyUI with quantgate's QGCalibrate node
between the model loader and the sampler: a ModelPatcher clone whose unet wrapper hooks every
Linear for the duration of each model call and records its input statistics (amax, percentiles
of |x| such as p99.9 / p99.99, mean, std, per sigma bin, per-channel amax). The result is a
calibration JSON with provenance (model sha256, workflow, seeds, ComfyUI version); the same seeds
give the same JSON.

--holdout-seeds renders other seeds and keeps a few input rows per call (beside the JSON as
<out>.samples.safetensors); --report then prints each layer's output SQNR (dB) on them for the
activation policies: weight-only, none, calibrated (amax, percentiles), weight-derived, 1.0.

--act-samples FILE also keeps --sample-rows input rows per Linear call of the calibration runs and
writes them (at most --act-rows per Linear, bf16) as activation SAMPLES for
`convert --rounding gptq|learned --act-samples FILE`: the recorder for any model ComfyUI runs."""


# Default calibration seeds start here: the render gate renders seeds 1-3 (policy.toml) and its control
# seed + 1000; calibrating on the seeds the gate then renders would hide overfitting (issue 21).
FIRST_SEED = 101


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def register(sub):
    from harness.commands.gate import add_server_args
    p = sub.add_parser("calibrate", help="record per-layer activation statistics in ComfyUI (for input_scale)",
                       description=DESCRIPTION, formatter_class=__import__("argparse").RawDescriptionHelpFormatter,
                       epilog="then: quantgate convert SOURCE --format nvfp4 --act-stats calib.json\n"
                              "exit codes: 0 written, 2 bad input/usage/server (no output file is left), 130 interrupted")
    p.add_argument("source", help="the unquantized diffusion model (.safetensors) to calibrate")
    p.add_argument("-o", "--output", required=True, metavar="JSON", help="calibration JSON to write")
    p.add_argument("--seeds", nargs="+", type=int, metavar="N",
                   help=f"sampler seeds (default: {FIRST_SEED}..{FIRST_SEED - 1}+--runs: disjoint from the render gate's "
                        "seeds, so the gate renders on seeds the calibration never saw)")
    p.add_argument("--runs", type=int, default=4, metavar="N", help="number of seeds when --seeds is not given (default 4)")
    p.add_argument("--size", action="append", metavar="WxH",
                   help="render size (repeatable; default: the policy's plan sizes)")
    p.add_argument("--bins", type=int, default=6, help="sigma bins (default 6; bin 0 = noisiest steps)")
    p.add_argument("--percentiles", nargs="+", type=float, metavar="P",
                   help="percentiles of |x| to store (default 99 99.9 99.99 99.999)")
    p.add_argument("--holdout-seeds", nargs="*", type=int, metavar="N",
                   help="seeds rendered only to keep held-out input rows (default with --report: 1001 1002)")
    p.add_argument("--sample-rows", type=int, default=8, metavar="R",
                   help="held-out input rows kept per Linear call (default 8)")
    p.add_argument("--act-samples", metavar="FILE",
                   help="also keep the calibration runs' input rows (--sample-rows per Linear call) and write them "
                        "as activation SAMPLES for `convert --rounding gptq|learned --act-samples FILE` (one "
                        "<layer>.input tensor per Linear, bf16; the server holds sample-rows x calls x K floats per "
                        "Linear while it samples: keep --sample-rows small on big models)")
    p.add_argument("--act-rows", type=int, default=4096, metavar="N",
                   help="at most N rows per Linear in --act-samples (a seeded subset; default 4096)")
    p.add_argument("--report", action="store_true",
                   help="print per-layer output SQNR on the held-out rows (and store it in the JSON)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--json", action="store_true", help="print the calibration JSON")
    add_server_args(p)
    p.set_defaults(func=run)


def _sizes(args, policy) -> list[tuple[int, int]]:
    if not args.size:
        return [(int(w), int(h)) for w, h in policy["plan"]["sizes"]]
    out = []
    for s in args.size:
        try:
            w, h = (int(v) for v in s.lower().split("x"))
        except ValueError:
            raise UsageError(f"--size {s!r}: expected WxH such as 64x64") from None
        if w <= 0 or h <= 0:
            raise UsageError(f"--size {s!r}: width and height must be positive")
        out.append((w, h))
    return out


def _checked_paths(args):
    """(output, source, inputs): the one output check (issue 20): never the source (also through a link), never a
    FIFO/device, --force rules; made before the renders and again, atomically, when the file is committed."""
    from quant.errors import InputError
    from quant.outputs import check_output
    out, src = Path(args.output), Path(args.source)
    if not src.is_file():
        raise InputError("no such file", src)
    inputs = [src, args.workflow, args.policy]
    check_output(out, inputs, overwrite=args.force, what="calibration output")
    if getattr(args, "act_samples", None):
        check_output(Path(args.act_samples), inputs + [out], overwrite=args.force, what="activation samples output")
    return out, src, inputs


def run(args) -> int:
    from harness.activations import collect, sqnr
    from harness.render.gate import load_policy
    from harness.render.session import open_session
    from harness.render.workflow import Workflow
    from harness.verify.record import sha256_file
    from quant.errors import InputError
    from quant.outputs import write_text
    out, src, inputs = _checked_paths(args)
    samples_out = out.with_name(out.name.removesuffix(".json") + ".samples.safetensors")
    if args.model_node and not args.workflow:
        raise UsageError("--model-node needs --workflow")
    if args.runs < 1:
        raise UsageError("--runs must be >= 1")
    if args.bins < 1:
        raise UsageError("--bins must be >= 1")
    if args.act_samples and (args.sample_rows < 1 or args.act_rows < 1):
        raise UsageError("--act-samples needs --sample-rows >= 1 and --act-rows >= 1")
    pcts = args.percentiles or list(collect.PERCENTILES)
    if any(not (0 < p < 100) for p in pcts):
        raise UsageError("--percentiles must lie strictly between 0 and 100")
    policy = load_policy(args.policy)
    sizes = _sizes(args, policy)
    seeds = args.seeds or list(range(FIRST_SEED, FIRST_SEED + args.runs))
    gate_seeds = sorted(set(seeds) & {int(x) for x in policy["plan"].get("seeds", [])})
    if gate_seeds:
        _log(f"warning: calibration seeds {gate_seeds} are also the render gate's seeds (policy plan): the gate "
             "would judge on renders the calibration saw; the default seeds avoid them")
    holdout = args.holdout_seeds if args.holdout_seeds is not None else ([1001, 1002] if args.report else [])
    if set(holdout) & set(seeds):
        raise UsageError("--holdout-seeds must differ from the calibration seeds (held-out means unseen)")
    if args.report and not holdout:
        raise UsageError("--report needs held-out seeds (--holdout-seeds N ...)")
    wf = Workflow.from_arg(args.workflow, args.model_node)
    plan = policy["plan"]
    settings = {k: plan[k] for k in ("steps", "cfg", "sampler", "scheduler", "cond_seed", "neg_seed") if k in plan}
    timeout = float(plan.get("render_timeout_s", 300))
    root = py = None
    if not args.comfy_url:
        from harness.render.matrix import targets
        tg = targets(args.comfy_root, args.comfy_python)
        if len(tg) != 1:
            raise UsageError("calibrate runs on one ComfyUI: give at most one --comfy-root")
        root, py = tg[0].root, tg[0].python
    with tempfile.TemporaryDirectory(prefix="quantgate-calibrate-") as tmp:
        with open_session(args.comfy_url, root, work_dir=Path(tmp) / "comfy", log=_log,
                          comfy_python=py) as session:
            session.check_nodes({"a": {"class_type": "QGCalibrate"}, "b": {"class_type": "QGCalibrationSave"}})
            name = session.model(src)
            if "vae" in wf.holes:
                settings["vae"] = session.vae()
            merged = collect.collect(session, name, workflow=wf, seeds=seeds, sizes=sizes, settings=settings,
                                     bins=args.bins, sample_rows=args.sample_rows if args.act_samples else 0,
                                     timeout=timeout, log=_log)
            held = None
            if holdout:
                held = collect.collect(session, name, workflow=wf, seeds=holdout, sizes=sizes, settings=settings,
                                       bins=args.bins, sample_rows=args.sample_rows, timeout=timeout, log=_log,
                                       what="held-out")
            settings.pop("vae", None)
            cal = merged.to_json(pcts)
            cal = {"schema": cal.pop("schema"),
                   "provenance": collect.provenance(session, src, sha256_file(src), wf, settings, seeds, sizes, holdout),
                   **cal}
    samples_path = _write_samples(held, samples_out, cal, inputs + [out], args.force) if held is not None else None
    if args.act_samples:
        _write_act_samples(merged, Path(args.act_samples), cal, inputs + [out], args)
    if args.report:
        res = sqnr.table(src, cal, collect.load_samples(samples_path),
                         percentiles=[p for p in pcts if p in (99.9, 99.99)] or pcts[:2])
        cal["sqnr"] = res
    write_text(out, json.dumps(cal, indent=1) + "\n", inputs, overwrite=args.force, what="calibration output")
    _print_result(args, cal, out, samples_path)
    return 0


def _write_samples(held, path: Path, cal: dict, inputs: list, force: bool) -> Path:
    """The held-out rows beside the JSON (its provenance names the file and its sha256)."""
    from harness.activations import collect
    from harness.verify.record import sha256_file
    from quant.outputs import check_output
    from quant.safetensors_io import save_file
    tensors, index = collect.samples_tensors(held)
    check_output(path, inputs, overwrite=force, what="held-out samples output")
    save_file(tensors, path, {"quantgate_samples": json.dumps(index)})
    cal["provenance"]["holdout_samples"] = {"file": path.name, "sha256": sha256_file(path)}
    return path


def _write_act_samples(merged, path: Path, cal: dict, inputs: list, args) -> None:
    """The calibration runs' input rows as activation samples for convert (quant.activations.samples' format):
    per Linear at most ``--act-rows`` rows (a seeded subset, kept in recording order), bf16. Its provenance
    (file, sha256, rows per layer) goes into the calibration JSON."""
    import torch

    from harness.verify.record import sha256_file
    from quant.activations.samples import layer_seed, save_samples
    from quant.outputs import check_output
    acts = {}
    for layer in merged.order:
        if layer not in merged.samples:
            continue
        x = torch.cat(merged.samples[layer])
        if x.shape[0] > args.act_rows:
            g = torch.Generator().manual_seed(layer_seed(0, layer))
            x = x[torch.randperm(x.shape[0], generator=g)[: args.act_rows].sort().values]
        acts[layer] = x.to(torch.bfloat16)
    if not acts:
        raise UsageError("--act-samples: the calibration runs kept no input rows")
    check_output(path, inputs, overwrite=args.force, what="activation samples output")
    save_samples(acts, path)
    rows = sorted({int(v.shape[0]) for v in acts.values()})
    cal["provenance"]["act_samples"] = {"file": path.name, "sha256": sha256_file(path), "layers": len(acts),
                                        "rows_min": rows[0], "rows_max": rows[-1]}


def _print_result(args, cal: dict, out: Path, samples_path: Path | None) -> None:
    from harness.activations import sqnr
    if args.json:
        print(json.dumps(cal, indent=1))
        return
    n = len(cal["layers"])
    top = sorted(cal["layers"].items(), key=lambda kv: -kv[1]["amax"])[:5]
    print(f"calibrated {n} Linear layers over {cal['runs']} runs ({cal['model_calls']} model calls): {out}")
    for k, v in top:
        pk = [x for x in v if x.startswith("p")]
        print(f"  {k:<32} amax {v['amax']:<10g} " + " ".join(f"{x} {v[x]:g}" for x in pk[:3]))
    if samples_path:
        print(f"held-out rows: {samples_path}")
    if cal["provenance"].get("act_samples"):
        a = cal["provenance"]["act_samples"]
        print(f"activation samples ({a['layers']} Linears, {a['rows_min']}-{a['rows_max']} rows each): {args.act_samples}")
    if args.report:
        for line in sqnr.format_table(cal["sqnr"]):
            print(line)
