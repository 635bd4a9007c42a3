"""quantgate inspect: a summary of a checkpoint from its headers alone."""
from __future__ import annotations

import json
from collections import Counter

from quant import arch
from quant.sources import open_source
from quant.spec import QUANT_METADATA_KEY


def summarize(src) -> dict:
    names = src.keys()
    dtypes = Counter(src.info(n).dtype for n in names)
    bytes_by = Counter()
    for n in names:
        bytes_by[src.info(n).dtype] += src.info(n).nbytes
    layers = {}
    qm = src.metadata.get(QUANT_METADATA_KEY)
    if qm:
        try:
            layers = json.loads(qm).get("layers", {})
        except (ValueError, AttributeError):
            layers = {"<unparseable _quantization_metadata>": {}}
    fmts = Counter()
    for v in layers.values():
        fmts[v.get("format", "?") if isinstance(v, dict) else f"<{type(v).__name__}>"] += 1
    comfy_quant = sum(1 for n in names if n.endswith(".comfy_quant"))
    legacy = [n for n in names if n.endswith("scaled_fp8")]
    scale_weight = sum(1 for n in names if n.endswith(".scale_weight"))
    if legacy:
        layout = f"legacy scaled fp8 (marker {legacy[0]}, {scale_weight} scale_weight)"
    elif layers or comfy_quant:
        layout = f"comfy_quant mixed ({len(layers)} layers in header, {comfy_quant} .comfy_quant tensors)"
    elif dtypes.get("F8_E4M3") and not scale_weight:
        layout = "plain fp8 cast (no scales)"
    else:
        layout = "unquantized"
    return {"path": str(src.path), "kind": src.kind, "files": len(src.files), "tensors": len(names),
            "bytes": src.total_bytes, "family": arch.detect(names), "layout": layout,
            "dtypes": dict(dtypes), "bytes_by_dtype": dict(bytes_by), "quantized_formats": dict(fmts),
            "metadata": {k: (v if len(v) < 200 else v[:200] + f"... ({len(v)} chars)") for k, v in src.metadata.items()}}


def register(sub):
    p = sub.add_parser("inspect", help="summarize a checkpoint (formats, dtypes, sizes, layout, metadata)")
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    with open_source(args.checkpoint) as src:
        s = summarize(src)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{s['path']}  ({s['kind']}, {s['files']} file(s))")
    print(f"  model     {s['family'] or 'unknown'}")
    print(f"  layout    {s['layout']}")
    print(f"  tensors   {s['tensors']}, {s['bytes'] / 1e6:,.1f} MB")
    for dt, c in sorted(s["dtypes"].items(), key=lambda x: -s["bytes_by_dtype"][x[0]]):
        print(f"    {dt:<8} {c:>6} tensors  {s['bytes_by_dtype'][dt] / 1e6:>12,.1f} MB")
    if s["quantized_formats"]:
        print("  quantized " + ", ".join(f"{v} {k}" for k, v in s["quantized_formats"].items()))
    for k, v in s["metadata"].items():
        print(f"  meta      {k} = {v}")
    return 0
