"""The format registry: one object per output format, everything quantgate knows about it.

    from quant import formats
    fmt = formats.get("nvfp4")          # UsageError naming the choices for an unknown name
    fmt.companions, fmt.decode_scale_key, fmt.full_scale, fmt.min_comfy, fmt.file_suffix, ...
    fmt.layer_entries(...), fmt.quantize(w), fmt.dequantize(...)
    formats.FORMATS                      # name -> format, in --format order
    formats.TARGETS                      # names `convert` writes

A format is a class in this package deriving from :class:`Format` (defining it registers it). Adding
one (mxfp8, int8, ...) = one module with its traits and its quantize/dequantize; writer, checker, twin,
CLI choices and `quantgate formats` pick it up. Facts follow ../shared/reference/comfy_format.md. The
checker still proves numerics through comfy-kitchen, never through a format's own dequantize.
"""
from __future__ import annotations

from ..errors import UsageError
from .base import (CARRIER_COMFY_QUANT, CARRIER_MARKER, SHAPE_RULE_DOC, SHAPES, Companion, Format,  # noqa: F401
                   _REGISTRY, resolve_shape, shape_rule)
from quant.comfy.versions import (COMFY_QUANT_SUFFIX, COMFY_VERSIONS, FORMAT_VERSION, QUANT_ALGOS_SINCE,
                                  QUANT_METADATA_KEY, comfy_has, comfy_quant_bytes, comfy_quant_config,
                                  comfy_quant_tensor, quantization_metadata, version_lt)  # noqa: F401
from . import fp8 as _fp8_formats  # noqa: F401  (registers fp8-legacy, fp8)
from . import nvfp4 as _nvfp4_formats  # noqa: F401  (registers nvfp4)
from . import int8 as _int8  # noqa: F401
from . import int8_convrot as _int8_convrot  # noqa: F401
from . import mxfp8 as _mxfp8  # noqa: F401
from . import w4a4_convrot as _w4a4_convrot  # noqa: F401
from . import w4a8_int8 as _w4a8_int8  # noqa: F401
from . import int8_fast as _int8_fast  # noqa: F401  (read-only dialect: comfy-quants' INT8-Fast files)

FORMATS: dict[str, Format] = dict(sorted(_REGISTRY.items(), key=lambda kv: kv[1].order))
TARGETS: tuple[str, ...] = tuple(n for n, f in FORMATS.items() if f.target)
# comfy "format" string -> the (first) comfy_quant-carried format that reads it (legacy files are found by
# marker; for a layer's dict use for_conf, which tells int8 from int8-convrot)
BY_COMFY_FORMAT: dict[str, Format] = {}
for _f in FORMATS.values():
    if _f.carrier == CARRIER_COMFY_QUANT and _f.comfy_format:
        BY_COMFY_FORMAT.setdefault(_f.comfy_format, _f)


def get(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise UsageError(f"unknown format {name!r}; choose one of {', '.join(TARGETS)}") from None


def for_conf(conf) -> Format | None:
    """The format of a layer's comfy_quant dict (None: not one quantgate knows). Formats sharing a ComfyUI format
    string (int8_tensorwise with or without ConvRot) are told apart by :meth:`Format.matches_conf`."""
    if not isinstance(conf, dict):
        return None
    name = conf.get("format")
    return next((f for f in FORMATS.values() if f.carrier == CARRIER_COMFY_QUANT and f.comfy_format == name
                 and f.matches_conf(conf)), None)


def dialect_for(conf) -> Format | None:
    """A format declared by a comfy_quant dict WITHOUT "format" (a custom node's dialect), or None."""
    return for_conf(conf) if isinstance(conf, dict) and "format" not in conf else None


def marker_format() -> Format:
    """The format whose files are declared by a marker tensor (the legacy scaled_fp8 file)."""
    return next(f for f in FORMATS.values() if f.carrier == CARRIER_MARKER)


def layer_suffixes() -> list[str]:
    """Every per-layer key suffix any format uses."""
    return sorted({c.suffix for f in FORMATS.values() for c in f.companions}
                  | {k for f in FORMATS.values() for k in f.per_layer_keys} | {"bias", COMFY_QUANT_SUFFIX})


def describe() -> str:
    """Human-readable description of the formats (`quantgate formats`)."""
    lines = []
    for f in FORMATS.values():
        lines.append(f"{f.name}  (ComfyUI >= {f.min_comfy}; carrier: {f.carrier})")
        lines.append(f"  {f.description}")
        for c in f.companions:
            req = "required" if c.required else "optional"
            lines.append(f"  <layer>.{c.suffix:<15} {'/'.join(c.dtypes):<12} {SHAPE_RULE_DOC[c.shape]:<40} {req}: {c.meaning}")
        if f.marker:
            m = f.marker
            lines.append(f"  {m['key']:<22} {m['dtype']:<12} {list(m['shape'])}  marker: {m['meaning']}")
        lines.append("")
    return "\n".join(lines)


def markdown_table() -> str:
    """The README's formats table (`quantgate formats --markdown`; a test keeps the README equal to it)."""
    rows = ["| format | what is written | ComfyUI |", "|---|---|---|"]
    rows += [f"| `{f.name}` | {f.doc_written} | {f.doc_comfy} |" for f in FORMATS.values() if f.target]
    return "\n".join(rows)


__all__ = ["Format", "Companion", "FORMATS", "TARGETS", "BY_COMFY_FORMAT", "get", "marker_format", "describe",
           "resolve_shape", "layer_suffixes"]
