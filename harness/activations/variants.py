"""Activation-policy variants of a comfy_quant file, for the numbers and the tests: the same weights
with another activation policy on every fp8/NVFP4 layer, both carriers (header metadata and
``.comfy_quant`` tensors) rewritten together. Written atomically; the input is never modified.

* ``weight-derived``: input_scale = the layer's own weight scale (fp8 weight_scale, NVFP4
  weight_scale_2), full_precision_matrix_mult dropped: what converters that "fix" a missing
  input_scale from weight statistics write (~65x too small for NVFP4).
* ``unit``: input_scale = 1.0, full_precision_matrix_mult dropped.
* ``none``: no input_scale and no full_precision_matrix_mult (fp8: unit-scale cast on fp8 GPUs;
  NVFP4: dynamic global scale).
* ``fpmm``: no input_scale, full_precision_matrix_mult on every fp8 layer (weight-only fp8).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from quant import formats, layout
from quant.errors import InputError
from quant.safetensors_io import SafetensorsFile, save_file

MODES = ("weight-derived", "unit", "none", "fpmm")
QUANT_KEY = "_quantization_metadata"


def make(path, out, mode: str) -> Path:
    if mode not in MODES:
        raise ValueError(mode)
    with SafetensorsFile(path) as f:
        tensors = {k: f.get(k).clone() for k in f.keys()}
        meta = dict(f.metadata)
    from quant.inputs import parse_json                       # bounded (issue 20)
    if not isinstance(meta.get(QUANT_KEY), str):
        raise InputError("not a comfy_quant mixed file (no header _quantization_metadata)", path)
    q = parse_json(meta[QUANT_KEY], path, what="header _quantization_metadata")
    layers = q.get("layers") if isinstance(q, dict) else None
    if not isinstance(layers, dict) or not all(isinstance(c, dict) for c in layers.values()):
        raise InputError("header _quantization_metadata has no 'layers' object of layer objects", path)
    for layer, conf in layers.items():
        fmt = formats.for_conf(conf)
        if fmt is None or not fmt.static_input_scale:     # the formats whose input_scale is a choice
            continue
        conf.pop("full_precision_matrix_mult", None)
        tensors.pop(f"{layer}.input_scale", None)
        if mode == "weight-derived":
            ws = tensors[f"{layer}.{fmt.decode_scale_key}"]
            tensors[f"{layer}.input_scale"] = ws.to(torch.float32).reshape(()).clone()
        elif mode == "unit":
            tensors[f"{layer}.input_scale"] = torch.tensor(1.0, dtype=torch.float32)
        elif mode == "fpmm" and fmt.weight_only_without_input_scale:
            conf["full_precision_matrix_mult"] = True
        if f"{layer}.comfy_quant" in tensors:
            tensors[f"{layer}.comfy_quant"] = layout.comfy_quant_tensor(conf)
    meta[QUANT_KEY] = json.dumps(q)
    meta["quantgate.activation_variant"] = mode
    save_file(tensors, out, meta)
    return Path(out)
