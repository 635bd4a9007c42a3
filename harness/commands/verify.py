"""`quantgate verify CKPT [--source SRC] [--reference REF] [--strict] [--json] [--record FILE]`."""
from __future__ import annotations

import json
import sys

HELP = "check that a quantized checkpoint is well-formed and decodes to its source (the format gate)"


def register(sub):
    p = sub.add_parser("verify", help=HELP, description=HELP + ". Exit 0 passes (warnings are printed, each "
                       "line says 'warning'), 1 defects found, 2 unreadable input or usage error.")
    p.add_argument("checkpoint", help=".safetensors file, *.index.json or shard directory")
    p.add_argument("--source", help="the unquantized source (file/index/shard dir): proves every layer numerically "
                                    "through comfy-kitchen's dequantizers")
    p.add_argument("--reference", help="a golden manifest name (quantgate manifest list) or checkpoint to compare "
                                       "the layout with")
    p.add_argument("--structure-only", action="store_true",
                   help="with --reference: ignore tensor widths (thin test models vs full-size manifests)")
    p.add_argument("--act-stats", "--calibration", dest="calibration", metavar="JSON",
                   help="activation statistics from `quantgate calibrate` (--calibration: the older name): activation scales more than 8x away from the "
                        "calibrated amax/full-scale in either direction are errors (weight-derived scales, the fp8 "
                        "default 1.0); --json lists every layer's ratio")
    p.add_argument("--strict", action="store_true", help="treat every warning as an error")
    p.add_argument("--allow-unchecked", action="store_true",
                   help="accept layers of a ComfyUI format quantgate cannot decode (a warning instead of an error); "
                        "the summary then names how many layers were NOT checked")
    p.add_argument("--device", default="cpu", help="where the numeric check dequantizes (cpu, or cuda on a GPU box)")
    p.add_argument("--header-only", action="store_true",
                   help="without --source: check headers and scale values only, do not read weight data")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--record", metavar="FILE", help="write a gate record JSON (sha256 of checkpoint and source, "
                                                   "tool version, findings, minimum ComfyUI)")
    p.add_argument("--no-hash", action="store_true", help="with --record: skip the sha256 of the files")
    p.add_argument("-v", "--verbose", action="store_true", help="also print info findings")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.verify import verify
    if args.record:             # before any work: a record never replaces an input
        from harness.verify.record import check_record_path
        check_record_path(args.record, [args.checkpoint, args.source, args.reference])
    rep = verify(args.checkpoint, args.source, args.reference, strict=args.strict,
                 header_only=args.header_only, structure_only=args.structure_only, device=args.device,
                 calibration=args.calibration, allow_unchecked=args.allow_unchecked)
    if args.json:
        print(json.dumps(rep.as_dict(), indent=1))
    else:
        for line in rep.lines(verbose=args.verbose):
            print(line)
    if args.record:
        from harness.verify.record import make_record, write_record
        write_record(make_record(rep, hash_files=not args.no_hash), args.record,
                     [args.checkpoint, args.source, args.reference])
        if not args.json:
            print(f"gate record: {args.record}", file=sys.stderr)
    return rep.exit_code
