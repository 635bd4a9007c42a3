"""The one declarative description of every output format.

Read by the layout writer (what to emit), the format checker (what to require/allow) and the docs
(`quantgate formats`). Facts follow ../shared/reference/comfy_format.md. The checker still proves the
numerics through comfy-kitchen, so a bug here cannot hide behind a self-consistent writer+checker.

Shape rules are small names resolved by :func:`resolve_shape` for a logical Linear weight [N, K].
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field


def rup(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def nvfp4_packed_shape(n: int, k: int) -> tuple[int, int]:
    """Shape of the U8 NVFP4 weight for a logical [n, k] Linear weight."""
    return rup(n, 16), rup(k, 16) // 2


def nvfp4_scale_shape(n: int, k: int) -> tuple[int, int]:
    """Shape of the swizzled F8_E4M3 block-scale tensor for a logical [n, k] weight."""
    return rup(rup(n, 16), 128), rup(rup(k, 16) // 16, 4)

# safetensors dtype string -> bytes per element
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
HIGH_PRECISION = ("F16", "BF16", "F32")


def resolve_shape(rule: str, n: int, k: int) -> tuple[int, ...]:
    if rule == "NK":
        return (n, k)
    if rule == "scalar":
        return ()
    if rule == "one":
        return (1,)
    if rule == "nvfp4_packed":
        return nvfp4_packed_shape(n, k)
    if rule == "nvfp4_block_scales":
        return nvfp4_scale_shape(n, k)
    raise KeyError(rule)


SHAPE_RULE_DOC = {
    "NK": "[N, K] (unchanged)",
    "scalar": "[] (0-d scalar)",
    "one": "[1]",
    "nvfp4_packed": "[rup(N,16), rup(K,16)/2], two E2M1 codes per byte, even element in the high nibble",
    "nvfp4_block_scales": "[rup(rup(N,16),128), rup(rup(K,16)/16,4)], cuBLAS 128x4 swizzled, zero padded",
}


@dataclass(frozen=True)
class Companion:
    """One tensor ``<layer>.<suffix>`` of a quantized layer."""
    suffix: str
    dtypes: tuple[str, ...]          # first = what the writer emits; all = what the checker accepts
    shape: str                       # rule name (see SHAPE_RULE_DOC)
    required: bool
    meaning: str
    alt_shapes: tuple[str, ...] = ()  # other shapes ComfyUI accepts (checker: accept, info)
    positive_finite: bool = False     # value(s) must be finite and > 0
    # other dtypes ComfyUI converts on load (checker: warning, not error): per-tensor float scales are
    # cast to float32 (legacy scale_weight param copy; kitchen Params for weight_scale/_2)
    tolerated_dtypes: tuple[str, ...] = ()


@dataclass(frozen=True)
class FormatSpec:
    name: str                        # CLI name
    comfy_format: str | None         # value of "format" in comfy_quant / _quantization_metadata
    carrier: str                     # "scaled_fp8_marker" | "comfy_quant"
    companions: tuple[Companion, ...]
    min_comfy: str                   # oldest ComfyUI that loads the file correctly
    description: str
    per_layer_keys: tuple[str, ...] = ()   # every key a quantized layer may have (checker)
    marker: dict = field(default_factory=dict)
    # quantity the numeric check compares against (relative Frobenius error bound per element dist.)
    max_rel_error: float = 0.0
    min_cosine: float = 0.0

    def companion(self, suffix: str) -> Companion | None:
        return next((c for c in self.companions if c.suffix == suffix), None)

    def entries(self, layer: str, n: int, k: int, *, with_input_scale: bool = False) -> list[tuple[str, str, tuple]]:
        """(key, dtype, shape) of every tensor the writer emits for a quantized Linear [n, k]
        (bias and comfy_quant excluded: they depend on the source and the JSON text)."""
        out = []
        for c in self.companions:
            if c.required or (c.suffix in ("input_scale", "scale_input") and with_input_scale):
                out.append((f"{layer}.{c.suffix}", c.dtypes[0], resolve_shape(c.shape, n, k)))
        return out


FP8_LEGACY = FormatSpec(
    name="fp8-legacy",
    comfy_format="float8_e4m3fn",
    carrier="scaled_fp8_marker",
    companions=(
        Companion("weight", ("F8_E4M3",), "NK", True, "fp8 weight, pre-divided by scale_weight"),
        Companion("scale_weight", ("F32",), "one", True, "decode multiplier amax/448 (KJ stores [1])",
                  alt_shapes=("scalar",), positive_finite=True, tolerated_dtypes=("BF16", "F16")),
        Companion("scale_input", ("F32",), "one", False, "static activation scale (fp8 matmul only)",
                  alt_shapes=("scalar",), positive_finite=True, tolerated_dtypes=("BF16", "F16")),
    ),
    per_layer_keys=("weight", "bias", "scale_weight", "scale_input"),
    marker={"key": "scaled_fp8", "dtype": "F8_E4M3", "shape": (2,),
            "meaning": "2 elements = weight-only fp8 (full_precision_matrix_mult); 0 = fp8 matmul allowed"},
    min_comfy="0.3.25",
    description="Legacy KJ/Comfy 'scaled fp8': F8_E4M3 weights, F32 <layer>.scale_weight [1], marker "
                "scaled_fp8 F8_E4M3 [2], everything else in source precision. Linears kept in high precision "
                "stay so only from ComfyUI 0.4.0 (older ones cast them to fp8 unscaled: convert with "
                "--comfy-version 0.3.x to scale every Linear).",
    max_rel_error=0.08, min_cosine=0.995,
)

FP8 = FormatSpec(
    name="fp8",
    comfy_format="float8_e4m3fn",
    carrier="comfy_quant",
    companions=(
        Companion("weight", ("F8_E4M3",), "NK", True, "fp8 weight, pre-divided by weight_scale"),
        Companion("weight_scale", ("F32",), "scalar", True, "decode multiplier amax/448",
                  alt_shapes=("one",), positive_finite=True, tolerated_dtypes=("BF16", "F16")),
        Companion("input_scale", ("F32",), "scalar", False, "calibrated static activation scale amax(x)/448",
                  alt_shapes=("one",), positive_finite=True, tolerated_dtypes=("BF16", "F16")),
    ),
    per_layer_keys=("weight", "bias", "weight_scale", "input_scale", "comfy_quant"),
    min_comfy="0.4.0",
    description="ComfyUI mixed precision (comfy_quant): F8_E4M3 weight, F32 0-d weight_scale, per-layer "
                ".comfy_quant U8 JSON and header _quantization_metadata; full_precision_matrix_mult unless "
                "a calibrated input_scale is given.",
    max_rel_error=0.08, min_cosine=0.995,
)

NVFP4 = FormatSpec(
    name="nvfp4",
    comfy_format="nvfp4",
    carrier="comfy_quant",
    companions=(
        Companion("weight", ("U8",), "nvfp4_packed", True, "packed E2M1 codes, even element in the high nibble"),
        Companion("weight_scale", ("F8_E4M3", "U8"), "nvfp4_block_scales", True,
                  "per-16 block scales, e4m3, cuBLAS 128x4 swizzled"),
        Companion("weight_scale_2", ("F32",), "scalar", True, "per-tensor decode scale amax/(448*6)",
                  alt_shapes=("one",), positive_finite=True, tolerated_dtypes=("BF16", "F16")),
        Companion("input_scale", ("F32",), "scalar", False, "calibrated activation scale amax(x)/(448*6)",
                  alt_shapes=("one",), positive_finite=True, tolerated_dtypes=("BF16", "F16")),
    ),
    per_layer_keys=("weight", "bias", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale",
                    "comfy_quant"),
    min_comfy="0.8.0",
    description="ComfyUI/comfy-kitchen NVFP4: U8 packed E2M1 weight, swizzled F8_E4M3 block scales, F32 0-d "
                "weight_scale_2, optional calibrated input_scale; .comfy_quant and _quantization_metadata.",
    max_rel_error=0.25, min_cosine=0.96,
)

FORMATS: dict[str, FormatSpec] = {f.name: f for f in (FP8_LEGACY, FP8, NVFP4)}
# comfy "format" string -> our spec (for reading files)
BY_COMFY_FORMAT = {"float8_e4m3fn": FP8, "nvfp4": NVFP4}

QUANT_METADATA_KEY = "_quantization_metadata"
COMFY_QUANT_SUFFIX = "comfy_quant"
FORMAT_VERSION = "1.0"

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
    "nvfp4": "0.8.0",
    "float8_e5m2": "0.8.0",
    "mxfp8": "0.18.0",
    "int8_tensorwise": "0.27.0",
    "pre_quant_scale": "0.30.0",
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


# comfy "format" strings known per version (QUANT_ALGOS history)
QUANT_ALGOS_SINCE = {
    "float8_e4m3fn": "0.3.68", "float8_e5m2": "0.8.0", "nvfp4": "0.8.0", "mxfp8": "0.18.0",
    "int8_tensorwise": "0.27.0", "convrot_w4a4": "0.28.0", "asym_w4a8_int8": "0.31.0", "awq_w4a16": "0.38.0",
}


def comfy_quant_config(spec: FormatSpec, *, full_precision_mm: bool) -> dict:
    """The per-layer JSON dict (same in the .comfy_quant tensor and the header)."""
    conf = {"format": spec.comfy_format}
    if full_precision_mm:
        conf["full_precision_matrix_mult"] = True
    return conf


def comfy_quant_bytes(conf: dict) -> bytes:
    # ComfyUI writes json.dumps(conf).encode() (default separators); so do we.
    return json.dumps(conf).encode("utf-8")


def quantization_metadata(layers: dict[str, dict]) -> str:
    return json.dumps({"format_version": FORMAT_VERSION, "layers": layers})


def describe() -> str:
    """Human-readable table of the formats (docs, `quantgate formats`)."""
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
