"""File-level layout: which tensors a converted file holds and its header metadata, from the format
registry (:mod:`quant.formats`). Per-layer tensors are the format objects' business."""
from __future__ import annotations

from . import formats
from .formats import QUANT_METADATA_KEY, comfy_quant_tensor, quantization_metadata  # noqa: F401


def file_kind(target: str) -> str:
    """'legacy' (scaled_fp8 marker file) or 'mixed' (comfy_quant file)."""
    return "legacy" if formats.get(target).legacy else "mixed"


def layer_format(target: str, action: str) -> formats.Format:
    """The format of a layer the preset decided ``action`` ("fp8" | "nvfp4") for in a ``target`` file."""
    return formats.get(target).for_action(action)


def layer_config(target: str, action: str, has_input_scale: bool) -> dict | None:
    return layer_format(target, action).layer_config(has_input_scale)


def layer_entries(target: str, action: str, layer: str, n: int, k: int, *,
                  input_scale: bool = False) -> list[tuple[str, str, tuple]]:
    return layer_format(target, action).layer_entries(layer, n, k, input_scale=input_scale)


def layer_tensors(target: str, action: str, layer: str, weight, *, input_amax: float | None = None,
                  name: str | None = None) -> dict:
    """Quantize one Linear weight [N, K] into its ComfyUI tensors (CPU tensors, spec order)."""
    fmt = layer_format(target, action)
    return fmt.layer_tensors(layer, fmt.quantize(weight, name=name), input_amax=input_amax)


def activation_scale(target: str, action: str, amax: float):
    """input_scale from a calibrated activation amax: amax / the layer format's full scale."""
    return layer_format(target, action).activation_scale(amax)


def marker_entry(target: str | None = None) -> tuple[str, str, tuple] | None:
    """The file-level marker tensor's entry of a ``target`` file (None: the format has none; default: the
    marker format's)."""
    m = (formats.get(target) if target else formats.marker_format()).marker
    return (m["key"], m["dtype"], tuple(m["shape"])) if m else None


def marker_tensor(target: str | None = None):
    return (formats.get(target) if target else formats.marker_format()).marker_tensor()


def header_metadata(target: str, layer_configs: dict[str, dict], source_meta: dict[str, str],
                    extra: dict[str, str]) -> dict[str, str]:
    meta = {k: v for k, v in source_meta.items() if k != QUANT_METADATA_KEY}
    if not formats.get(target).legacy and layer_configs:
        meta[QUANT_METADATA_KEY] = quantization_metadata(layer_configs)
    else:
        meta.setdefault("format", "pt")
    meta.update(extra)
    return meta


__all__ = ["file_kind", "layer_format", "layer_entries", "layer_tensors", "layer_config", "comfy_quant_tensor",
           "marker_entry", "marker_tensor", "header_metadata", "activation_scale"]
