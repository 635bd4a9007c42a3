"""``quantgate nightly compare OLD NEW`` and ``quantgate nightly trend RECORDS... -o trend.html``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from quant.errors import UsageError

RULES = ("regressions, decided from the runs' own spread: a time (median, seconds per step, load, ...) or a "
         "throughput worse by > 10 %% (best of N) AND, with >= 3 repeats each, a one-sided rank test p < 0.05, with "
         "fewer, worse by more than the runs' spread; one repeat on each side is not judged; SSIM lower by > 0.01, "
         "VRAM higher by > 5 %%").replace("%%", "%")


def register(sub):
    p = sub.add_parser("nightly", help="compare nightly records (pytest-benchmark JSON) and draw their trend",
                       description="A nightly record is the pytest-benchmark JSON of `./qg test -m gpu` or `./qg bench` "
                                   "(benchmarks/results/ holds the committed ones). " + RULES + ".")
    s = p.add_subparsers(dest="nightly_cmd", metavar="ACTION")
    c = s.add_parser("compare", help="flag regressions of NEW against OLD (exit 1 if any)",
                     description="Compare every benchmark both records hold. " + RULES +
                                 ". Exit 0 none, 1 regressions, 2 unreadable records.")
    c.add_argument("old", help="the earlier record (.json)")
    c.add_argument("new", help="the later record (.json)")
    c.add_argument("--json", action="store_true", help="print the comparison as JSON")
    c.add_argument("--all", action="store_true", help="list unchanged figures too")
    c.set_defaults(func=run_compare)
    t = s.add_parser("trend", help="an HTML page with one plot per benchmark figure over all records",
                     description="Plot every comparable figure of the given records (files or directories of "
                                 "*.json) in date order; PNGs are written beside the page.")
    t.add_argument("records", nargs="+", help="record files or directories")
    t.add_argument("-o", "--out", default="nightly-trend.html", help="the HTML page (default: nightly-trend.html)")
    t.add_argument("--force", action="store_true", help="overwrite an existing page (never a record it reads)")
    t.set_defaults(func=run_trend)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def run_compare(args) -> int:
    from harness.nightly import records as nightly
    old, new = nightly.load(args.old), nightly.load(args.new)
    changes, gone, added = nightly.compare(old, new)
    bad = [c for c in changes if c.regression]
    if args.json:
        print(json.dumps({"old": nightly.describe(old), "new": nightly.describe(new),
                          "regressions": [c.as_dict() for c in bad],
                          "changes": [c.as_dict() for c in changes], "only_old": gone, "only_new": added}, indent=1))
        return 1 if bad else 0
    print(f"old: {nightly.describe(old)}\nnew: {nightly.describe(new)}")
    shown = changes if args.all else bad
    if shown:
        w = max(len(f"{c.benchmark} {c.figure}") for c in shown)
        for c in shown:
            flag = ("REGRESSION" if c.regression else
                    "not judged" if c.decided.startswith("not judged") else "ok")
            sp = (f"  [{nightly.spread_text(c.old_spread)} -> {nightly.spread_text(c.new_spread)}]"
                  if c.rule.startswith(("slower", "throughput")) else "")
            print(f"  {(c.benchmark + ' ' + c.figure):<{w}}  {c.old:>12.5g} -> {c.new:<12.5g} {c.delta:>9}{sp}  {flag}"
                  f"{'  (' + c.rule + '; ' + c.decided + ')' if c.regression or flag == 'not judged' else ''}")
    for n in gone:
        print(f"  only in old: {n}")
    for n in added:
        print(f"  only in new: {n}")
    nj = [c for c in changes if c.decided.startswith("not judged")]
    if nj and not args.all:
        print(f"  {len(nj)} figure(s) not judged (one repeat on each side: no spread); --all lists them")
    print(f"{len(bad)} regression(s) in {len(changes)} compared figures of "
          f"{len({c.benchmark for c in changes})} benchmarks")
    return 1 if bad else 0


def run_trend(args) -> int:
    from harness.nightly import records as nightly
    from quant.errors import InputError
    from quant.outputs import check_output
    files = [f for r in args.records for f in ([Path(r)] if not Path(r).is_dir() else sorted(Path(r).glob("*.json")))]
    # the one output check (issue 20): never one of the records (named or in a directory), --force rules
    check_output(args.out, files, overwrite=args.force, what="trend page")
    recs = []
    for r in args.records:
        p = Path(r)
        if not p.is_dir():
            recs.append((str(p), nightly.load(p)))      # a file named on the command line must be a record
            continue
        for f in sorted(p.glob("*.json")):               # a directory may hold other JSON too: say so, go on
            try:
                recs.append((str(f), nightly.load(f)))
            except InputError as e:
                print(f"quantgate: skipped {e}", file=sys.stderr)
    if not recs:
        raise UsageError("no nightly records among the given files and directories")
    out = nightly.trend_html(recs, args.out, overwrite=args.force, inputs=files)
    print(f"trend of {len(recs)} records: {out}", file=sys.stdout)
    return 0
