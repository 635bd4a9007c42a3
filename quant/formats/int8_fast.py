"""The INT8 W8A8 dialect Comfy-Org's converter comfy-quants writes for the ComfyUI-INT8-Fast custom node (NOT for
stock ComfyUI): a per-layer ``comfy_quant`` marker WITHOUT a "format" key, ``{"convrot": true, "convrot_groupsize":
256, "per_row": true}`` (``{"convrot": false, "per_row": true}`` where K is not a multiple of the group), an I8
``[N, K]`` weight and an F32 ``weight_scale`` ``[N, 1]``, no input_scale.

The numbers are int8-convrot's / int8's (same Hadamard, same per-row scales), so verify decodes them with
comfy-kitchen's TensorWiseINT8Layout; what differs is the loader: stock ComfyUI raises "Unknown quantization format
for layer" on a marker without "format", and a stock file (``"format": "int8_tensorwise"``) is not what the
INT8-Fast node's ``Int8TensorwiseOps`` expects. ``inspect`` and ``verify`` name the loader. quantgate reads this
dialect; it does not write it (``target = False``).
"""
from __future__ import annotations

from . import convrot
from .base import CARRIER_COMFY_QUANT, Companion, Format
from .int8 import DYNAMIC_INT8, INT8_MAX, _convrot_flag, convrot_group, int8_bound

LOADER = "the ComfyUI-INT8-Fast custom node (Int8TensorwiseOps); stock ComfyUI fails with 'Unknown quantization format'"


class Int8Fast(Format):
    name = "int8-fast"
    order = 50
    target = False
    kernel = "int8_fast"
    comfy_format = None
    carrier = CARRIER_COMFY_QUANT
    file_suffix = "_int8_w8a8"
    full_scale = INT8_MAX
    decode_scale_key = "weight_scale"
    input_scale_key = "input_scale"
    loader = LOADER
    companions = (
        Companion("weight", ("I8",), "NK", True, "int8 codes (of the ConvRot-rotated weight when convrot)",
                  missing="the layer has scales but no weight"),
        Companion("weight_scale", ("F32",), "N1", True, "per-row decode multiplier amax/127", positive_finite=True),
    )
    per_layer_keys = ("weight", "bias", "weight_scale", "comfy_quant")
    min_comfy = "custom node"
    loads_since = "custom node"
    activation = "rotated (when convrot) and " + DYNAMIC_INT8.replace("comfy-kitchen's int8_linear", "INT8-Fast's kernel")
    native_sm = (7, 5)
    max_rel_error = 0.08
    min_cosine = 0.995
    description = ("comfy-quants' INT8 W8A8 for the ComfyUI-INT8-Fast custom node: comfy_quant marker without "
                   "'format' ({convrot, convrot_groupsize, per_row}), I8 weight [N, K], F32 weight_scale [N, 1]. "
                   "Read and checked by quantgate, not written; not loadable by stock ComfyUI.")

    def matches_conf(self, conf: dict) -> bool:
        return "format" not in conf and conf.get("per_row") is True

    def verify_group(self, conf):
        return convrot_group(conf) if _convrot_flag(conf) else None

    def emulation(self, conf):
        return {"format": "int8_convrot" if _convrot_flag(conf) else "int8", "group": self.verify_group(conf)}

    def conf_problems(self, conf, n, k):
        return convrot.group_problems(convrot_group(conf), k) if _convrot_flag(conf) else []

    def elem_bound(self, tensors, ref, conf):
        g = self.verify_group(conf)
        return int8_bound(tensors["weight_scale"], convrot.rotate(ref, g) if g else ref)

    def dequantize(self, tensors, shape=None, dtype=None, *, backend=None, group=None):
        from .int8 import dequantize_rowwise
        from .int8_convrot import dequantize_convrot
        if group:
            return dequantize_convrot(tensors["weight"], tensors["weight_scale"], group, dtype)
        return dequantize_rowwise(tensors["weight"], tensors["weight_scale"], dtype)


def is_dialect(conf) -> bool:
    return isinstance(conf, dict) and Int8Fast.matches_conf(Int8Fast, conf)
