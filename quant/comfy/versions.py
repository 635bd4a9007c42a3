"""ComfyUI facts every format shares: when each feature appeared, and the ``comfy_quant`` carrier
(the per-layer JSON in ``<layer>.comfy_quant`` and the header ``_quantization_metadata``).

One table of versions (comfy_format.md section 5); a format's own minimum is derived from it.
"""
from __future__ import annotations

import json

QUANT_METADATA_KEY = "_quantization_metadata"
COMFY_QUANT_SUFFIX = "comfy_quant"
FORMAT_VERSION = "1.0"

# comfy "format" strings known per version (QUANT_ALGOS history)
QUANT_ALGOS_SINCE = {
    "float8_e4m3fn": "0.3.68", "float8_e5m2": "0.8.0", "nvfp4": "0.8.0", "mxfp8": "0.18.0",
    "int8_tensorwise": "0.27.0", "convrot_w4a4": "0.28.0", "asym_w4a8_int8": "0.31.0", "awq_w4a16": "0.38.0",
}

# First ComfyUI release containing each feature (comfy_format.md section 5).
COMFY_VERSIONS = {
    "scaled_fp8_marker": "0.2.4",
    "scaled_fp8_marker_2": "0.3.25",
    # from 0.4.0 (convert_old_quants) Linears without scale_weight in a scaled_fp8 file stay high
    # precision; before, scaled_fp8_ops built every Linear in fp8 and cast them without a scale
    "legacy_high_precision_linear": "0.4.0",
    "quantization_metadata_header": "0.3.68",
    "comfy_quant_tensor": "0.4.0",
    "full_precision_matrix_mult": "0.4.0",
    "pre_quant_scale": "0.30.0",
    # quantization formats: the same dates as QUANT_ALGOS_SINCE (one table, not two)
    **{k: QUANT_ALGOS_SINCE[k] for k in ("nvfp4", "float8_e5m2", "mxfp8", "int8_tensorwise")},
}


def version_lt(a: str, b: str) -> bool | None:
    """a < b for ComfyUI version strings; None when either is not a version (e.g. "unknown")."""
    from packaging.version import InvalidVersion, Version
    try:
        return Version(a) < Version(b)
    except InvalidVersion:
        return None


def comfy_has(feature: str, comfy_version: str) -> bool | None:
    """Whether ComfyUI ``comfy_version`` has ``feature`` (a key of COMFY_VERSIONS); None if unknown."""
    lt = version_lt(comfy_version, COMFY_VERSIONS[feature])
    return None if lt is None else not lt


def comfy_quant_config(fmt, *, full_precision_mm: bool) -> dict:
    """The per-layer JSON dict (same in the .comfy_quant tensor and the header)."""
    conf = {"format": fmt.comfy_format}
    if full_precision_mm:
        conf["full_precision_matrix_mult"] = True
    return conf


def comfy_quant_bytes(conf: dict) -> bytes:
    # ComfyUI writes json.dumps(conf).encode() (default separators); so do we.
    return json.dumps(conf).encode("utf-8")


def comfy_quant_tensor(conf: dict):
    """The per-layer ``<layer>.comfy_quant`` tensor: 1-D U8 bytes of the JSON config."""
    import torch
    return torch.frombuffer(bytearray(comfy_quant_bytes(conf)), dtype=torch.uint8)


def quantization_metadata(layers: dict[str, dict]) -> str:
    return json.dumps({"format_version": FORMAT_VERSION, "layers": layers})
