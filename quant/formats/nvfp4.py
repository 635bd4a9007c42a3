"""NVFP4 (ComfyUI/comfy-kitchen ``nvfp4``): packed E2M1 codes, swizzled e4m3 per-16 block scales, a
float32 per-tensor ``weight_scale_2``; the layout math is in :mod:`quant.kernels.nvfp4`."""
from __future__ import annotations

from ..kernels.facts import BLOCK, E2M1_MAX, E4M3_MAX, packed_shape, scale_shape
from .base import CARRIER_COMFY_QUANT, Companion, Format, shape_rule
from quant.comfy.versions import QUANT_ALGOS_SINCE

shape_rule("nvfp4_packed", packed_shape,
           "[rup(N,16), rup(K,16)/2], two E2M1 codes per byte, even element in the high nibble")
shape_rule("nvfp4_block_scales", scale_shape,
           "[rup(rup(N,16),128), rup(rup(K,16)/16,4)], cuBLAS 128x4 swizzled, zero padded")

_TOLERATED = ("BF16", "F16")
_MISSING = "ComfyUI fails with 'Missing NVFP4 scales'"


class Nvfp4(Format):
    name = "nvfp4"
    order = 2
    kernel = "nvfp4"
    dynamic_without_input_scale = True       # ComfyUI: amax/(448*6) per call
    comfy_format = "nvfp4"
    carrier = CARRIER_COMFY_QUANT
    file_suffix = "_nvfp4mixed"
    full_scale = E4M3_MAX * E2M1_MAX
    decode_scale_key = "weight_scale_2"
    input_scale_key = "input_scale"
    block_scale_key = "weight_scale"
    companions = (
        Companion("weight", ("U8",), "nvfp4_packed", True, "packed E2M1 codes, even element in the high nibble",
                  missing="the layer has scales but no weight"),
        Companion("weight_scale", ("F8_E4M3", "U8"), "nvfp4_block_scales", True,
                  "per-16 block scales, e4m3, cuBLAS 128x4 swizzled", missing=_MISSING),
        Companion("weight_scale_2", ("F32",), "scalar", True, "per-tensor decode scale amax/(448*6)",
                  alt_shapes=("one",), positive_finite=True, tolerated_dtypes=_TOLERATED, missing=_MISSING),
        Companion("input_scale", ("F32",), "scalar", False, "calibrated activation scale amax(x)/(448*6)",
                  alt_shapes=("one",), positive_finite=True, tolerated_dtypes=_TOLERATED),
    )
    per_layer_keys = ("weight", "bias", "weight_scale", "weight_scale_2", "input_scale", "pre_quant_scale",
                      "comfy_quant")
    min_comfy = QUANT_ALGOS_SINCE["nvfp4"]
    loads_since = QUANT_ALGOS_SINCE["nvfp4"]
    doc_written = ("U8 packed E2M1 (even element in the high nibble), F8_E4M3 block scales in the cuBLAS 128×4 "
                   f"swizzled layout, F32 `weight_scale_2` = amax/{E4M3_MAX * E2M1_MAX:g}; sensitive layers FP8 per "
                   "preset; both carriers")
    doc_comfy = f"≥ {QUANT_ALGOS_SINCE['nvfp4']}"
    description = ("ComfyUI/comfy-kitchen NVFP4: U8 packed E2M1 weight, swizzled F8_E4M3 block scales, F32 0-d "
                   "weight_scale_2, optional calibrated input_scale; .comfy_quant and _quantization_metadata.")
    runtime_note = ("nvfp4 runs natively only on Blackwell (SM >= 10, cu130 PyTorch); on H100/H200 and older GPUs "
                    "ComfyUI dequantizes it to bf16 on every forward")
    max_rel_error = 0.25
    min_cosine = 0.96
    four_bit = True              # the presets' sensitive-layer rules (nvfp4 = "fp8" | "keep") apply
    learned_rounding = True
    native_sm = (10, 0)

    def stored_nk(self, weight_shape):
        return weight_shape[0], weight_shape[1] * 2            # padded dims

    def block_scales_fit(self, weight_shape, scales_shape) -> bool:
        np_, kp = weight_shape[0], weight_shape[1] * 2
        bs = scales_shape
        return not (len(bs) != 2 or bs[0] % 128 or bs[1] % 4 or bs[0] < np_ or bs[1] * BLOCK < kp)

    def quantize(self, w, *, backend=None, name=None) -> dict:
        from ..kernels import get_backend
        q, bs, s2 = (backend or get_backend(w.device)).quantize_nvfp4(w, name=name)
        return {"weight": q, "weight_scale": bs, "weight_scale_2": s2}

    def quantize_async(self, tq, x):
        packed, scales, s2, amax = tq.quantize_nvfp4_async(x)
        return {"weight": packed, self.block_scale_key: scales, self.decode_scale_key: s2}, amax

    def negated_weight(self, w):
        return w ^ 0x88                      # the E2M1 sign bits of both nibbles

    def dequantize(self, tensors, shape=None, dtype=None, *, backend=None):
        import torch
        from ..kernels import get_backend
        q = tensors["weight"]
        n, k = shape if shape is not None else (q.shape[0], q.shape[1] * 2)
        bs = tensors["weight_scale"]
        if bs.dtype == torch.uint8:
            bs = bs.view(torch.float8_e4m3fn)
        return (backend or get_backend(q.device)).dequantize_nvfp4(q, bs, tensors["weight_scale_2"], n, k,
                                                                   dtype or torch.float32)
