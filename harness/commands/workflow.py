"""`quantgate workflow convert WF.json|DIR --map OLD=NEW ... [--dry-run]` and `quantgate workflow rollback`."""
from __future__ import annotations

import sys

HELP = "rewrite ComfyUI workflows from GGUF loaders to the core loaders (and back)"
DESC = """\
convert: rewrites UI-format and API-format workflows. ComfyUI-GGUF loader nodes (UnetLoaderGGUF,
UnetLoaderGGUFAdvanced, CLIPLoaderGGUF, DualCLIPLoaderGGUF, TripleCLIPLoaderGGUF, QuadrupleCLIPLoaderGGUF)
become UNETLoader / CLIPLoader / DualCLIPLoader / TripleCLIPLoader / QuadrupleCLIPLoader (type kept,
weight_dtype from --weight-dtype), and every file name given with --map OLD=NEW is replaced. Node ids, links
and other widgets are kept. The original bytes are kept beside each changed file as
<file>.quantgate-backup; 'rollback' restores them byte-exactly. A file quantgate does not understand (not
JSON, not a workflow, a GGUF node with unexpected widgets, a .gguf with no --map, a linked output the core
loader lacks) is refused and then no file is changed.

exit codes: 0 converted (or nothing to convert), 2 bad input / refused (nothing changed), 130 interrupted."""


def register(sub):
    import argparse
    p = sub.add_parser("workflow", help=HELP, description=DESC, formatter_class=argparse.RawDescriptionHelpFormatter)
    wsub = p.add_subparsers(dest="workflow_command", metavar="ACTION")
    c = wsub.add_parser("convert", help="GGUF loaders -> core loaders, rename model files",
                        description=DESC, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("target", metavar="WF.json|DIR", help="a workflow file, or a directory of *.json workflows")
    c.add_argument("--map", action="append", default=[], metavar="OLD=NEW",
                   help="replace model file name OLD by NEW (repeatable), e.g. wan-Q8_0.gguf=wan_fp8.safetensors")
    c.add_argument("--weight-dtype", default="default",
                   choices=["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"],
                   help="UNETLoader weight_dtype (default: 'default', right for files already quantized)")
    c.add_argument("--dry-run", action="store_true", help="print a unified diff per file; write nothing")
    c.set_defaults(func=run_convert)
    r = wsub.add_parser("rollback", help="restore converted workflows from their .quantgate-backup files")
    r.add_argument("target", metavar="WF.json|DIR")
    r.set_defaults(func=run_rollback)
    p.set_defaults(func=lambda a: _no_action(p))


def _no_action(p) -> int:
    p.print_help(sys.stderr)
    return 2


def run_convert(args) -> int:
    from harness.gguf import workflow_convert as W
    maps = W.parse_maps(args.map)
    results = W.convert_all(args.target, maps, args.weight_dtype)
    used = set().union(*(r.used_maps for r in results)) if results else set()
    changed = [r for r in results if r.changed]
    if args.dry_run:
        for r in changed:
            sys.stdout.write(r.diff())
    else:
        W.write_all(results)
    for r in results:
        state = ("would change" if args.dry_run else "converted") if r.changed else "unchanged"
        extra = f" ({len(r.changes)} change(s); backup {W.backup_path(r.path).name})" if r.changed and not args.dry_run \
            else (f" ({len(r.changes)} change(s))" if r.changed else "")
        print(f"{state}: {r.path} [{r.kind} format]{extra}", file=sys.stderr)
    for old in sorted(set(maps) - used):
        print(f"quantgate: note: --map {old}=... matched no node", file=sys.stderr)
    print(f"{len(changed)} of {len(results)} workflow(s) {'would change' if args.dry_run else 'converted'}",
          file=sys.stderr)
    return 0


def run_rollback(args) -> int:
    from harness.gguf import workflow_convert as W
    for p in W.rollback(args.target):
        print(f"restored: {p}", file=sys.stderr)
    return 0
