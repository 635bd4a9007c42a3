"""Small fp8 files written directly with :mod:`quant.fp8` (independent of the converter), and the
planted silent-wrong files the render gate must catch: ComfyUI loads and renders them without any
error, only logging ``unet missing`` / ``unet unexpected``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from quant import fp8
from quant.safetensors_io import SafetensorsFile, save_file


def fp8_file(src, out, layout: str = "legacy", *, marker: bool = True, drop_scales: tuple[str, ...] = (),
             scale_shape=(1,)) -> Path:
    """Quantize every 2-D weight of ``src`` to fp8 e4m3fn with a per-tensor scale.

    layout "legacy": ``<layer>.scale_weight`` + ``scaled_fp8`` marker (``marker=False`` plants the
    missing-marker defect; ``drop_scales`` plants missing scales). layout "mixed": ``<layer>.weight_scale``
    + header ``_quantization_metadata`` (what ComfyUI 0.3.68-0.3.77 reads)."""
    out = Path(out)
    tensors: dict[str, torch.Tensor] = {}
    layers = {}
    with SafetensorsFile(src) as f:
        for n in f.keys():
            t = f.get(n)
            if n.endswith(".weight") and t.dim() == 2 and t.is_floating_point():
                layer = n[:-7]
                q, s = fp8.quantize(t.to(torch.float32), name=n)
                tensors[n] = q
                if layout == "legacy":
                    if layer not in drop_scales:
                        tensors[f"{layer}.scale_weight"] = s.reshape(scale_shape)
                else:
                    if layer not in drop_scales:
                        tensors[f"{layer}.weight_scale"] = s.reshape(())
                    layers[layer] = {"format": "float8_e4m3fn"}
            else:
                tensors[n] = t
    meta = None
    if layout == "legacy":
        if marker:
            tensors["scaled_fp8"] = torch.empty(2, dtype=torch.float8_e4m3fn)
    else:
        meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    save_file(tensors, out, meta)
    return out


def without(src, out, drop: tuple[str, ...]) -> Path:
    """Copy ``src`` without the named tensors (plants a missing marker / missing scale)."""
    with SafetensorsFile(src) as f:
        meta = dict(f.metadata)
        tensors = {n: f.get(n) for n in f.keys() if n not in drop}
    save_file(tensors, out, meta or None)
    return Path(out)
