"""`quantgate repair FILE -o OUT [--force] [--json]`: expand 8-bit log-coded scales into F32 scales."""
from __future__ import annotations

import json
import sys

HELP = "expand per-tensor scales stored as 8-bit log codes into ComfyUI-loadable F32 scales"
DESC = HELP + """.

Reads FILE (a .safetensors file, index or shard dir) whose fp8 layers carry their per-tensor scale as a U8
log code (255 levels, 1e-10..100), optionally one scale shared by related layers (stored once under their
parent module, e.g. blocks.0.self_attn.scale_weight for q/k/v/o). Writes OUT with every layer's scale as
an F32 tensor of its own (scale_weight [1] in the legacy scaled_fp8 layout, weight_scale [] in the
comfy_quant layout), every other tensor unchanged. The input is never modified; OUT appears complete or
not at all. Check the result with 'quantgate verify OUT --source SOURCE'.

exit codes: 0 repaired, 2 bad input (unreadable, no log-coded scales, invalid code, output exists), 130 interrupted."""


def register(sub):
    import argparse
    p = sub.add_parser("repair", help=HELP, description=DESC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", metavar="FILE")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="the repaired .safetensors file")
    p.add_argument("--force", action="store_true", help="overwrite OUT")
    p.add_argument("--json", action="store_true", help="print what was repaired as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from quant.log_scales import repair
    r = repair(args.checkpoint, args.output, force=args.force)
    if args.json:
        print(json.dumps(r, indent=1))
    else:
        print(f"repaired: {r['output']}: {r['coded_scales']} log-coded scale(s) ({r['shared']} shared) -> "
              f"{r['layers']} F32 .{r['suffix']} tensors", file=sys.stderr)
    return 0
