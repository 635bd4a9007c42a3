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
                "(harness/train/wan21-t2v-tiny.safetensors) were made with the defaults.")
    p = sub.add_parser("train-tiny", help="train the tiny reference WAN model on procedural data (CPU, minutes)",
                       description=from_doc)
    p.add_argument("-o", "--output", metavar="FILE", help="weights to write (default: the committed file, "
                   "harness/train/wan21-t2v-tiny.safetensors; needs --force)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the committed model's)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the committed model's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--stats", action="store_true", help="after training, sample the workflow's sigmas and print "
                   "per-layer activation statistics (amax, p99.9, outlier channels)")
    p.add_argument("--json", action="store_true", help="print the training record as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from quant.errors import UsageError
    from harness.train import tiny_model as tm
    out = Path(args.output) if args.output else tm.WEIGHTS
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists (use --force to overwrite)")
    cfg = tm.Config(seed=args.seed)
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
