"""``quantgate train-tiny``: train the tiny reference WAN 2.1 model on procedural images (CPU, minutes)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _log(msg: str) -> None:
    print(f"quantgate: {msg}", file=sys.stderr, flush=True)


def register(sub):
    from_doc = ("Train the tiny WAN 2.1 t2v reference model (real tensor names; ComfyUI's own WanModel) with "
                "flow matching on procedural images (a red disc on a gradient, stripes, boxes: one palette per conditioning seed; nothing downloaded) in the analytic "
                "latent space of its TAEHV decoder. Deterministic from --seed. The committed weights "
                "(harness/train/wan21-t2v-tiny.safetensors) were made with the defaults. --model picks one of the "
                "other families' tiny models (Qwen-Image, Qwen-Image-Edit, WAN 2.2 A14B's two experts), trained "
                "the same way with ComfyUI's own model classes.")
    p = sub.add_parser("train-tiny", help="train a tiny reference model on procedural data (CPU, minutes)",
                       description=from_doc)
    from harness.train.registry import DEFAULT, MODELS
    p.add_argument("--model", choices=list(MODELS), default=DEFAULT,
                   help="which tiny reference model: " + "; ".join(f"{m.name}: {m.describe}" for m in MODELS.values())
                   + f" (default {DEFAULT})")
    p.add_argument("-o", "--output", metavar="FILE", help="weights to write (default: the committed file(s) of "
                   "--model under harness/train/, which need --force; wan22-a14b-tiny writes FILE with -high / "
                   "-low before the suffix)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the committed model's)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the committed model's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--stats", action="store_true", help="after training, sample the workflow's sigmas and print "
                   "per-layer activation statistics (amax, p99.9, outlier channels)")
    p.add_argument("--json", action="store_true", help="print the training record as JSON")
    p.set_defaults(func=run)


def _run_other(args) -> int:
    """qwen-image-tiny, qwen-image-edit-tiny, wan22-a14b-tiny."""
    from quant.errors import UsageError
    from harness.train import a14b_tiny, qwen_tiny
    if args.stats:
        raise UsageError(f"--stats is for wan21-t2v-tiny (not {args.model})")
    over = {k: v for k, v in (("seed", args.seed), ("steps", args.steps), ("batch", args.batch)) if v is not None}
    for k in ("steps", "batch"):
        if k in over and over[k] < 1:
            raise UsageError(f"--{k} must be at least 1")
    if args.model in qwen_tiny.NAMES:
        jobs = [(qwen_tiny, qwen_tiny.config(args.model, **over),
                 Path(args.output) if args.output else qwen_tiny.weights_path(args.model))]
    else:
        def out(e):
            if not args.output:
                return a14b_tiny.weights_path(e)
            o = Path(args.output)
            return o.with_name(f"{o.stem}-{e}{o.suffix or '.safetensors'}")
        jobs = [(a14b_tiny, a14b_tiny.Config(expert=e, **over), out(e)) for e in a14b_tiny.EXPERTS]
    for _, _, o in jobs:
        if o.exists() and not args.force:
            raise UsageError(f"{o} exists (use --force to overwrite)")
    if args.model == "qwen-image-edit-tiny" and not qwen_tiny.weights_path("qwen-image-tiny").is_file():
        raise UsageError("qwen-image-edit-tiny starts from qwen-image-tiny's weights: train that first")
    recs = []
    for mod, cfg, o in jobs:
        _log(f"training {args.model}{' ' + cfg.expert if hasattr(cfg, 'expert') else ''} (seed {cfg.seed}, "
             f"{cfg.steps or 'default'} steps x batch {cfg.batch}, {mod.THREADS} thread)")
        state, info = mod.train(cfg)
        mod.save(state, o, cfg, info)
        recs.append({"output": str(o), "bytes": o.stat().st_size, **info})
    if args.json:
        print(json.dumps(recs if len(recs) > 1 else recs[0], indent=1))
    else:
        for r in recs:
            print(f"wrote {r['output']} ({r['bytes'] / 1e6:.2f} MB) in {r['train_s']} s; "
                  f"loss {r['loss_first50']:.4f} -> {r['loss_last50']:.4f}")
    return 0


def run(args) -> int:
    from quant.errors import UsageError
    from harness.train import tiny_model as tm
    if getattr(args, "model", "wan21-t2v-tiny") != "wan21-t2v-tiny":
        return _run_other(args)
    out = Path(args.output) if args.output else tm.WEIGHTS
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists (use --force to overwrite)")
    cfg = tm.Config(seed=args.seed if args.seed is not None else 0)
    if args.steps is not None:
        if args.steps < 1:
            raise UsageError("--steps must be at least 1")
        cfg.steps = args.steps
    if args.batch is not None:
        if args.batch < 1:
            raise UsageError("--batch must be at least 1")
        cfg.batch = args.batch
    _log(f"training {tm.ARCH} (seed {cfg.seed}, {cfg.steps} steps x batch {cfg.batch}, {tm.THREADS} thread)")
    state, info = tm.train(cfg)
    tm.save(state, out, cfg, info)
    rec = {"output": str(out), "bytes": out.stat().st_size, **info}
    if args.stats:
        from harness.train import stats
        rec["activations"] = stats.measure(tm.load_model(out))
    if args.json:
        print(json.dumps(rec, indent=1))
    else:
        print(f"wrote {out} ({rec['bytes'] / 1e6:.2f} MB) in {info['train_s']} s; "
              f"loss {info['loss_first50']:.4f} -> {info['loss_last50']:.4f}")
        if args.stats:
            from harness.train import stats
            print(stats.format_table(rec["activations"]))
    return 0
