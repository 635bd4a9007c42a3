"""quantgate ladder: weight error of GGUF files, FP8 and NVFP4-mixed against the same source."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub):
    p = sub.add_parser(
        "ladder", help="weight error per layer: GGUF files vs FP8 vs NVFP4-mixed (hand / GGUF-derived preset)",
        description="The quality ladder. For every 2-D weight that any candidate quantizes, the relative Frobenius "
                    "error and SQNR (dB) against SOURCE of: each --gguf file (dequantized by gguf-py), FP8 and "
                    "NVFP4-mixed under each --preset (default: the preset detected from the keys), and NVFP4-mixed "
                    "under the preset derived from each --preset-from-gguf file. Whole-model numbers pool the same "
                    "layers for every column. Headers are read first; tensors are streamed one at a time.",
        epilog="example:\n"
               "  quantgate ladder wan2.2_ti2v_5B_fp16.safetensors --gguf Wan2.2-TI2V-5B-Q4_0.gguf \\\n"
               "      --gguf Wan2.2-TI2V-5B-Q5_K_M.gguf --preset-from-gguf Wan2.2-TI2V-5B-Q5_K_M.gguf \\\n"
               "      --nvfp4-max-bits 5 --html ladder/ladder.html\n"
               "exit codes: 0 reported, 2 bad input/usage",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="the unquantized checkpoint (.safetensors, index.json, shard dir)")
    p.add_argument("--gguf", action="append", default=[], metavar="FILE.gguf", help="a GGUF of the same model "
                   "(repeatable)")
    p.add_argument("--formats", default="fp8,nvfp4", help="comma list of fp8, nvfp4, int8, int8-convrot, mxfp8, "
                   "w4a4-convrot, w4a8-int8 ('' for GGUF only; default fp8,nvfp4)")
    p.add_argument("--preset", "-p", action="append", default=[], help="hand preset name or .toml (repeatable; "
                   "default: detected)")
    p.add_argument("--preset-from-gguf", action="append", default=[], metavar="FILE.gguf",
                   help="add NVFP4-mixed under the preset derived from this GGUF (repeatable)")
    from harness.commands.preset import add_mapping_args
    add_mapping_args(p)
    p.add_argument("--layers", action="store_true", help="print the per-layer table too (default: whole model only "
                   "when there are more than 40 layers)")
    p.add_argument("--html", metavar="FILE.html", help="also write an HTML page with the table and a SQNR plot "
                   "(PNG beside it)")
    p.add_argument("--json", action="store_true", help="print the ladder as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.gguf import ladder
    from harness.commands.preset import mapping_from
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    mapping = mapping_from(args)
    lad = ladder.run(args.source, args.gguf, formats, args.preset or [None],
                     [(g, mapping) for g in args.preset_from_gguf], progress=sys.stderr.isatty() and not args.json)
    if args.html:
        ladder.write_html(lad, args.html)
    if args.json:
        print(json.dumps(lad.as_dict(), indent=1))
        return 0
    print(lad.table(per_layer=args.layers or len(lad.layers) <= 40))
    if args.html:
        print(f"wrote {args.html}")
    return 0
