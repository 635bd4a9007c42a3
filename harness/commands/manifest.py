"""`quantgate manifest list | show NAME [--json] [--tensors] | regen [--check]`: golden layout manifests."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from quant.errors import UsageError

HELP = "golden layout manifests of published reference checkpoints (generated from architecture templates)"


def register(sub):
    p = sub.add_parser("manifest", help=HELP, description=HELP + ".")
    s = p.add_subparsers(dest="action", metavar="ACTION")
    s.add_parser("list", help="list the manifests")
    sh = s.add_parser("show", help="summary of one manifest (file_bytes, tensors, dtypes, metadata)")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true", help="print the summary as JSON")
    sh.add_argument("--tensors", action="store_true", help="include every tensor (name, dtype, shape, offsets)")
    rg = s.add_parser("regen", help="regenerate golden/*.json from the templates")
    rg.add_argument("--check", action="store_true", help="only check that the committed files are up to date "
                                                          "(exit 1 if not)")
    p.set_defaults(func=run, _parser=p)


def run(args) -> int:
    from harness.verify import manifests as G
    if args.action == "list":
        for name in G.names():
            m = G.load(name) if G.path_of(name).is_file() else G.generate(G.BY_NAME[name])
            print(f"{name:<48} {m.get('tensor_count', len(m['tensors'])):>5} tensors "
                  f"{m.get('file_bytes') or 0:>15,} B  {m.get('description', '')}")
        return 0
    if args.action == "show":
        m = G.load(args.name)
        s = G.summary(m)
        if args.tensors:
            s["tensor_list"] = m["tensors"]
        if args.json:
            print(json.dumps(s, indent=1))
        else:
            for k, v in s.items():
                if k != "tensor_list":
                    print(f"{k:<19} {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k:<19} {v}")
            for n, t in s.get("tensor_list", {}).items():
                print(f"  {n} {t['dtype']}{t['shape']}")
        return 0
    if args.action == "regen":
        if args.check:
            with tempfile.TemporaryDirectory() as d:
                fresh = G.regen(Path(d))
                stale = [p.relative_to(d) for p in fresh
                         if not (G.GOLDEN_DIR / p.relative_to(d)).is_file()
                         or (G.GOLDEN_DIR / p.relative_to(d)).read_text() != p.read_text()]
            for s in stale:
                print(f"stale: golden/{s}")
            return 1 if stale else 0
        for p in G.regen():
            print(p)
        return 0
    raise UsageError("choose an action: quantgate manifest list | show NAME | regen")
