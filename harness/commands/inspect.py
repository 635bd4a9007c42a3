"""quantgate inspect: a summary of a checkpoint from its headers alone."""
from __future__ import annotations

import json
from collections import Counter

from quant import arch
from quant.formats import marker_format
from quant.sources import open_source


def summarize(src) -> dict:
    from quant.checkpoint import build
    names = src.keys()
    dtypes = Counter(src.info(n).dtype for n in names)
    bytes_by = Counter()
    for n in names:
        bytes_by[src.info(n).dtype] += src.info(n).nbytes
    st = build(src)             # what the file declares, read like the format gate reads it
    fmts = Counter(la.spec.name if la.spec else str(la.comfy_format) for la in st.declared)
    comfy_quant = sum(1 for n in names if n.endswith(".comfy_quant"))
    if st.markers:
        legacy = marker_format()
        layout = (f"legacy scaled fp8 (marker {st.markers[0].key}, {fmts.get(legacy.name, 0)} "
                  f"{legacy.decode_scale_key})")
    elif st.header_raw is not None or comfy_quant:
        layout = (f"comfy_quant mixed ({len(st.header_layers or {})} layers in header, "
                  f"{comfy_quant} .comfy_quant tensors)")
    elif dtypes.get("F8_E4M3"):
        layout = "plain fp8 cast (no scales)"
    else:
        layout = "unquantized"
    specs = {la.spec for la in st.declared if la.spec is not None}
    loaders = sorted({f"{f.name}: {f.loader}" for f in specs if f.loader})
    if specs and not loaders:
        loaders = [f"stock ComfyUI >= {max((f.loads_since for f in specs), key=_ver)}"]
    return {"path": str(src.path), "kind": src.kind, "files": len(src.files), "tensors": len(names),
            "loader": loaders,
            "bytes": src.total_bytes, "family": arch.detect(names), "layout": layout,
            "dtypes": dict(dtypes), "bytes_by_dtype": dict(bytes_by), "quantized_formats": dict(fmts),
            "metadata": {k: (v if len(v) < 200 else v[:200] + f"... ({len(v)} chars)") for k, v in src.metadata.items()},
            "model_kind": _model_kind(st)}


def _ver(v: str):
    from packaging.version import InvalidVersion, Version
    try:
        return Version(v)
    except InvalidVersion:
        return Version("0")


def _model_kind(st) -> dict | None:
    """VAEs and text encoders (quant.model_kind): what they are, which modules ComfyUI can quantize."""
    from quant import model_kind
    mk = model_kind.detect(st.infos)
    return None if mk is None else dict(mk.as_dict(), summary=mk.summary())


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
    if s.get("model_kind"):
        mk = s["model_kind"]
        print(f"  kind      {mk['summary']}")
        if mk["quantized"]:
            print(f"  quantized {len(mk['quantized'])} module(s) stored 8-bit: {', '.join(mk['quantized'][:3])}"
                  + (" ..." if len(mk["quantized"]) > 3 else ""))
    print(f"  tensors   {s['tensors']}, {s['bytes'] / 1e6:,.1f} MB")
    for dt, c in sorted(s["dtypes"].items(), key=lambda x: -s["bytes_by_dtype"][x[0]]):
        print(f"    {dt:<8} {c:>6} tensors  {s['bytes_by_dtype'][dt] / 1e6:>12,.1f} MB")
    if s["quantized_formats"]:
        print("  quantized " + ", ".join(f"{v} {k}" for k, v in s["quantized_formats"].items()))
    for ld in s["loader"]:
        print(f"  loader    {ld}")
    for k, v in s["metadata"].items():
        print(f"  meta      {k} = {v}")
    return 0
