"""FP8 e4m3fn per-tensor formats: the legacy ``scaled_fp8`` marker file and ComfyUI's ``comfy_quant``
``float8_e4m3fn``. Same numbers (amax/448 per tensor), different tensor names and carriers."""
from __future__ import annotations

from ..kernels.facts import E4M3_MAX
from .base import CARRIER_COMFY_QUANT, CARRIER_MARKER, Companion, Format
from quant.comfy.versions import COMFY_VERSIONS, QUANT_ALGOS_SINCE

_TOLERATED = ("BF16", "F16")


class _Fp8(Format, register=False):
    kernel = "fp8"
    full_scale = E4M3_MAX
    max_rel_error = 0.08
    min_cosine = 0.995
    learned_rounding = True

    def quantize(self, w, *, backend=None, name=None) -> dict:
        from ..kernels import get_backend
        q, s = (backend or get_backend(w.device)).quantize_fp8(w, name=name, check_finite="sync")
        return {"weight": q, self.decode_scale_key: s}

    def quantize_async(self, tq, x):
        q, scale, amax = tq.quantize_fp8_async(x)
        return {"weight": q, self.decode_scale_key: scale}, amax

    def dequantize(self, tensors, shape=None, dtype=None, *, backend=None):
        import torch
        from ..kernels import get_backend
        q = tensors["weight"]
        return (backend or get_backend(q.device)).dequantize_fp8(q, tensors[self.decode_scale_key].reshape(()),
                                                                 dtype or torch.float32)


class Fp8Legacy(_Fp8):
    name = "fp8-legacy"
    order = 0
    comfy_format = "float8_e4m3fn"
    carrier = CARRIER_MARKER
    file_suffix = "_fp8_e4m3fn_scaled"
    decode_scale_key = "scale_weight"
    input_scale_key = "scale_input"
    legacy_names = {"scale_weight": "weight_scale", "scale_input": "input_scale"}
    companions = (
        Companion("weight", ("F8_E4M3",), "NK", True, "fp8 weight, pre-divided by scale_weight",
                  missing="the layer has scales but no weight"),
        Companion("scale_weight", ("F32",), "one", True, "decode multiplier amax/448 (KJ stores [1])",
                  alt_shapes=("scalar",), positive_finite=True, tolerated_dtypes=_TOLERATED,
                  missing="ComfyUI silently uses 1.0 and the layer decodes wrong"),
        Companion("scale_input", ("F32",), "one", False, "static activation scale (fp8 matmul only)",
                  alt_shapes=("scalar",), positive_finite=True, tolerated_dtypes=_TOLERATED),
    )
    per_layer_keys = ("weight", "bias", "scale_weight", "scale_input")
    marker = {"key": "scaled_fp8", "dtype": "F8_E4M3", "shape": (2,),
              "meaning": "2 elements = weight-only fp8 (full_precision_matrix_mult); 0 = fp8 matmul allowed"}
    min_comfy = COMFY_VERSIONS["scaled_fp8_marker_2"]
    loads_since = COMFY_VERSIONS["scaled_fp8_marker"]
    doc_written = ("KJ recipe: F8_E4M3 weights, `<layer>.scale_weight` F32 `[1]`, marker `scaled_fp8` F8_E4M3 `[2]` "
                   "(weight-only fp8), other tensors in source precision")
    doc_comfy = (f"≥ {COMFY_VERSIONS['legacy_high_precision_linear']}; with `--comfy-version 0.3.x` every Linear is "
                 f"scaled and it loads right from {COMFY_VERSIONS['scaled_fp8_marker_2']}")
    description = ("Legacy KJ/Comfy 'scaled fp8': F8_E4M3 weights, F32 <layer>.scale_weight [1], marker "
                   "scaled_fp8 F8_E4M3 [2], everything else in source precision. Linears kept in high precision "
                   "stay so only from ComfyUI 0.4.0 (older ones cast them to fp8 unscaled: convert with "
                   "--comfy-version 0.3.x to scale every Linear).")


class Fp8(_Fp8):
    name = "fp8"
    order = 1
    comfy_format = "float8_e4m3fn"
    carrier = CARRIER_COMFY_QUANT
    file_suffix = "_fp8mixed"
    decode_scale_key = "weight_scale"
    input_scale_key = "input_scale"
    weight_only_without_input_scale = True
    companions = (
        Companion("weight", ("F8_E4M3",), "NK", True, "fp8 weight, pre-divided by weight_scale",
                  missing="the layer has scales but no weight"),
        Companion("weight_scale", ("F32",), "scalar", True, "decode multiplier amax/448",
                  alt_shapes=("one",), positive_finite=True, tolerated_dtypes=_TOLERATED,
                  missing="ComfyUI loads it with scale None and crashes at first use"),
        Companion("input_scale", ("F32",), "scalar", False, "calibrated static activation scale amax(x)/448",
                  alt_shapes=("one",), positive_finite=True, tolerated_dtypes=_TOLERATED),
    )
    per_layer_keys = ("weight", "bias", "weight_scale", "input_scale", "comfy_quant")
    min_comfy = COMFY_VERSIONS["comfy_quant_tensor"]
    loads_since = QUANT_ALGOS_SINCE["float8_e4m3fn"]
    doc_written = ("comfy_quant: F8_E4M3 weight, `weight_scale` F32 `[]`, per-layer `.comfy_quant` U8 JSON **and** "
                   "header `_quantization_metadata`; `full_precision_matrix_mult: true` unless a calibrated "
                   "`input_scale` is given (`--input-scales`)")
    doc_comfy = f"≥ {COMFY_VERSIONS['comfy_quant_tensor']}"
    description = ("ComfyUI mixed precision (comfy_quant): F8_E4M3 weight, F32 0-d weight_scale, per-layer "
                   ".comfy_quant U8 JSON and header _quantization_metadata; full_precision_matrix_mult unless "
                   "a calibrated input_scale is given.")
