"""`quantgate diff CKPT REF [--structure-only] [--json]`: layout diff with grouped explanations."""
from __future__ import annotations

import json

HELP = "compare the layouts of two checkpoints / index files / shard dirs / golden manifests"


def register(sub):
    p = sub.add_parser("diff", help=HELP, description=HELP + ". Exit 0 same or equivalent for ComfyUI, "
                       "1 differences, 2 unreadable input.")
    p.add_argument("checkpoint", help="checkpoint, *.index.json, shard dir or manifest name")
    p.add_argument("reference", help="checkpoint, *.index.json, shard dir or manifest name (quantgate manifest list)")
    p.add_argument("--structure-only", action="store_true",
                   help="ignore tensor widths (compare a thin test model with a full-size manifest)")
    p.add_argument("--json", action="store_true", help="print the diff as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.verify.layout_diff import diff_paths
    d = diff_paths(args.checkpoint, args.reference, structure_only=args.structure_only)
    if args.json:
        print(json.dumps(d.as_dict(), indent=1))
    else:
        for line in d.lines():
            print(line)
    return d.exit_code
