"""Layout writers: the tensors ComfyUI expects for each quantized layer, driven by quant.spec.

``layer_entries`` says up front which tensors a layer becomes (so the output header can be written
before any data), ``layer_tensors`` produces them. Pure functions of the source weight.
"""
from __future__ import annotations

import torch

from . import fp8 as _fp8
from . import nvfp4 as _nv
from .spec import (FORMATS, FP8, FP8_LEGACY, NVFP4, QUANT_METADATA_KEY, comfy_quant_bytes, comfy_quant_config,
                   quantization_metadata)


def file_kind(target: str) -> str:
    """'legacy' (scaled_fp8 marker file) or 'mixed' (comfy_quant file)."""
    return "legacy" if target == "fp8-legacy" else "mixed"


def layer_spec(target: str, action: str):
    if action == "fp8":
        return FP8_LEGACY if target == "fp8-legacy" else FP8
    if action == "nvfp4":
        return NVFP4
    raise ValueError(action)


def layer_config(target: str, action: str, has_input_scale: bool) -> dict | None:
    spec = layer_spec(target, action)
    if spec is FP8_LEGACY:
        return None
    # FP8 without a calibrated input_scale must not have its activations cast at scale 1.0
    # (ComfyUI >= 0.4 on fp8-capable GPUs): weight-only via full_precision_matrix_mult.
    return comfy_quant_config(spec, full_precision_mm=(spec is FP8 and not has_input_scale))


def layer_entries(target: str, action: str, layer: str, n: int, k: int, *,
                  input_scale: bool = False) -> list[tuple[str, str, tuple]]:
    spec = layer_spec(target, action)
    ents = spec.entries(layer, n, k, with_input_scale=input_scale)
    conf = layer_config(target, action, input_scale)
    if conf is not None:
        ents.append((f"{layer}.comfy_quant", "U8", (len(comfy_quant_bytes(conf)),)))
    return ents


def activation_scale(action: str, amax: float) -> torch.Tensor:
    """input_scale from a calibrated activation amax: amax/448 (fp8) or amax/(448*6) (nvfp4)."""
    div = 448.0 if action == "fp8" else 448.0 * 6.0
    return torch.tensor(float(amax) / div, dtype=torch.float32)


def layer_tensors(target: str, action: str, layer: str, weight: torch.Tensor, *,
                  input_amax: float | None = None, name: str | None = None) -> dict[str, torch.Tensor]:
    """Quantize one Linear weight [N, K] into its ComfyUI tensors (CPU tensors, spec order)."""
    spec = layer_spec(target, action)
    out: dict[str, torch.Tensor] = {}
    if spec is NVFP4:
        q, bs, s2 = _nv.quantize(weight, name=name)
        out[f"{layer}.weight"] = q.cpu()
        out[f"{layer}.weight_scale"] = bs.cpu()
        out[f"{layer}.weight_scale_2"] = s2.cpu()
    else:
        q, s = _fp8.quantize(weight, name=name)
        out[f"{layer}.weight"] = q.cpu()
        if spec is FP8_LEGACY:
            out[f"{layer}.scale_weight"] = s.cpu().reshape(1)
        else:
            out[f"{layer}.weight_scale"] = s.cpu()
    if input_amax is not None:
        key = "scale_input" if spec is FP8_LEGACY else "input_scale"
        v = activation_scale(action, input_amax)
        out[f"{layer}.{key}"] = v.reshape(1) if spec is FP8_LEGACY else v
    conf = layer_config(target, action, input_amax is not None)
    if conf is not None:
        out[f"{layer}.comfy_quant"] = comfy_quant_tensor(conf)
    return out


def comfy_quant_tensor(conf: dict) -> torch.Tensor:
    """The per-layer ``<layer>.comfy_quant`` tensor: 1-D U8 bytes of the JSON config."""
    return torch.frombuffer(bytearray(comfy_quant_bytes(conf)), dtype=torch.uint8)


def marker_entry() -> tuple[str, str, tuple]:
    m = FP8_LEGACY.marker
    return (m["key"], m["dtype"], tuple(m["shape"]))


def marker_tensor() -> torch.Tensor:
    return torch.zeros(FP8_LEGACY.marker["shape"], dtype=torch.float8_e4m3fn)


def header_metadata(target: str, layer_configs: dict[str, dict], source_meta: dict[str, str],
                    extra: dict[str, str]) -> dict[str, str]:
    meta = {k: v for k, v in source_meta.items() if k != QUANT_METADATA_KEY}
    if file_kind(target) == "mixed" and layer_configs:
        meta[QUANT_METADATA_KEY] = quantization_metadata(layer_configs)
    else:
        meta.setdefault("format", "pt")
    meta.update(extra)
    return meta


__all__ = ["FORMATS", "file_kind", "layer_entries", "layer_tensors", "layer_config", "comfy_quant_tensor", "marker_entry",
           "marker_tensor", "header_metadata", "activation_scale"]
