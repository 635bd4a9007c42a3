"""`quantgate doctor [--comfy-url URL | --comfy-root PATH] [--models DIR] [--workflows DIR] [--json]`."""
from __future__ import annotations

import json
import os
import sys

HELP = "check a ComfyUI install for the FP8/NVFP4 files its workflows use"
DESC = """\
Checks: the ComfyUI version (server /system_stats or the checkout's comfyui_version.py) and which quantgate
formats it loads; the GPU, its VRAM and whether fp8 / nvfp4 run natively or emulated there; custom nodes
(ComfyUI-GGUF enabled / disabled / absent); every model file the workflows in --workflows name: present in
--models (default: <comfy-root>/models), a readable checkpoint (header only; pickles are never opened) and
what its name claims (a '*fp8*' file that holds bf16 is a finding); free disk space.

exit codes: 0 no failures (warnings allowed), 1 failures found, 2 bad input, usage error or unreachable
server, 130 interrupted."""

COLOURS = {"ok": "32", "info": "36", "warn": "33", "fail": "31;1"}


def register(sub):
    import argparse
    p = sub.add_parser("doctor", help=HELP, description=DESC, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfy-url", metavar="URL", help="a running ComfyUI server (version, GPU, loaded custom nodes)")
    p.add_argument("--comfy-root", metavar="PATH", help="a ComfyUI checkout (version, custom_nodes dir, models dir)")
    p.add_argument("--models", metavar="DIR", help="the models directory (default: <comfy-root>/models)")
    p.add_argument("--workflows", metavar="DIR", help="workflows (UI or API format *.json) whose model files to check")
    p.add_argument("--json", action="store_true", help="print the facts and checks as JSON")
    p.set_defaults(func=run)


def table(rows, colour: bool) -> str:
    w_area = max([4] + [len(r["area"]) for r in rows])
    w_item = min(44, max([4] + [len(r["item"]) for r in rows]))
    out = [f"{'AREA':<{w_area}}  {'ITEM':<{w_item}}  {'STATUS':<6}  DETAIL"]
    for r in rows:
        st = f"{r['status']:<6}"
        if colour:
            st = f"\033[{COLOURS.get(r['status'], '0')}m{st}\033[0m"
        item = r["item"] if len(r["item"]) <= w_item else "..." + r["item"][-(w_item - 3):]
        out.append(f"{r['area']:<{w_area}}  {item:<{w_item}}  {st}  {r['detail']}")
    return "\n".join(out)


def run(args) -> int:
    from harness.comfy import doctor
    facts = doctor.run(args.comfy_url, args.comfy_root, args.models, args.workflows)
    if args.json:
        print(json.dumps(facts, indent=1))
        return facts["exit_code"]
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(table(facts["checks"], colour))
    n_fail = sum(r["status"] == "fail" for r in facts["checks"])
    n_warn = sum(r["status"] == "warn" for r in facts["checks"])
    print(f"{'FAIL' if n_fail else 'OK'}: {n_fail} failure(s), {n_warn} warning(s)")
    return facts["exit_code"]
