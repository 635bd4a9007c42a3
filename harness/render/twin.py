"""What a candidate file is (for thresholds), and the NVFP4 *dequantized twin*.

ComfyUI < 0.8 cannot load NVFP4. On such a server the render gate renders a twin instead: every
quantized layer dequantized by comfy-kitchen's eager reference (``ck.dequantize_nvfp4`` under
``ck.use_backend("eager")``; ``weight.float() * weight_scale`` for fp8 layers), all other tensors
copied, saved as a plain checkpoint. That is exactly the weight a GPU below SM 10 computes with
(ComfyUI dequantizes NVFP4 there); activation quantization is not emulated. Reports label it.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from packaging.version import InvalidVersion, Version

from quant.errors import InputError
from quant.safetensors_io import SafetensorsFile, read_header, save_file

QUANT_META = "_quantization_metadata"
NVFP4_MIN_COMFY = "0.8.0"
_DROP_SUFFIXES = (".comfy_quant", ".weight_scale", ".weight_scale_2", ".input_scale", ".pre_quant_scale",
                  ".scale_weight", ".scale_input")


def layer_formats(path) -> dict[str, str]:
    """{layer: comfy format} from the header's _quantization_metadata and .comfy_quant tensors."""
    h = read_header(path)
    out: dict[str, str] = {}
    raw = h.metadata.get(QUANT_META)
    if raw:
        try:
            layers = json.loads(raw).get("layers", {})
            for k, v in layers.items():
                out[k] = v.get("format", "?") if isinstance(v, dict) else str(v)
        except (ValueError, AttributeError):
            pass
    cq = [n for n in h.tensors if n.endswith(".comfy_quant")]
    if cq:
        with SafetensorsFile(path) as f:
            for n in cq:
                layer = n[: -len(".comfy_quant")]
                if layer in out:
                    continue
                try:
                    out[layer] = json.loads(bytes(f.raw(n)).decode("utf-8")).get("format", "?")
                except (ValueError, UnicodeDecodeError, AttributeError):
                    out[layer] = "?"
    return out


def candidate_format(path) -> str:
    """'nvfp4' | 'fp8' | 'fp8-legacy' | 'mxfp8' | other comfy format | 'unquantized'."""
    h = read_header(path)
    if "scaled_fp8" in h.tensors:
        return "fp8-legacy"
    fmts = set(layer_formats(path).values())
    if "nvfp4" in fmts:
        return "nvfp4"
    if "float8_e4m3fn" in fmts:
        return "fp8"
    if fmts:
        return sorted(fmts)[0]
    if any(t.dtype in ("F8_E4M3", "F8_E5M2") for t in h.tensors.values()):
        return "fp8-legacy"       # fp8 weights with no marker and no metadata (a malformed file)
    return "unquantized"


def server_supports(fmt: str, comfy_version: str) -> bool:
    if fmt != "nvfp4":
        return True
    try:
        return Version(comfy_version) >= Version(NVFP4_MIN_COMFY)
    except InvalidVersion:
        return False


def make_dequantized_twin(path, out, source=None) -> Path:
    """Write a plain checkpoint whose quantized layers are dequantized (comfy-kitchen eager)."""
    import comfy_kitchen as ck
    path, out = Path(path), Path(out)
    fmts = layer_formats(path)
    src_shapes = {}
    if source is not None:
        try:
            src_shapes = {n: t.shape for n, t in read_header(source).tensors.items()}
        except InputError:
            src_shapes = {}
    tensors: dict[str, torch.Tensor] = {}
    with SafetensorsFile(path) as f:
        names = f.keys()
        for n in names:
            if n == "scaled_fp8" or any(n.endswith(s) for s in _DROP_SUFFIXES):
                continue
            t = f.get(n)
            layer = n[: -len(".weight")] if n.endswith(".weight") else None
            fmt = fmts.get(layer) if layer else None
            if fmt == "nvfp4":
                qx = t.view(torch.uint8)
                bs = f.get(f"{layer}.weight_scale")
                bs = bs.view(torch.float8_e4m3fn) if bs.dtype == torch.uint8 else bs
                s2 = f.get(f"{layer}.weight_scale_2").to(torch.float32).reshape(())
                with ck.use_backend("eager"):
                    w = ck.dequantize_nvfp4(qx, s2, bs, torch.float32)
                shape = src_shapes.get(n)
                if shape is not None and len(shape) == 2:
                    w = w[: shape[0], : shape[1]]
                pqs = f"{layer}.pre_quant_scale"
                if pqs in names:
                    w = w * f.get(pqs).to(torch.float32).reshape(1, -1)[:, : w.shape[1]]
                t = w
            elif fmt == "float8_e4m3fn" or (layer and f"{layer}.scale_weight" in names and t.dtype == torch.float8_e4m3fn):
                sc = f"{layer}.weight_scale" if f"{layer}.weight_scale" in names else f"{layer}.scale_weight"
                scale = f.get(sc).to(torch.float32).reshape(()) if sc in names else torch.tensor(1.0)
                with ck.use_backend("eager"):
                    t = ck.dequantize_per_tensor_fp8(t, scale, torch.float32)
            elif t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                t = t.to(torch.float32)
            tensors[n] = t.contiguous()
    save_file(tensors, out, {"quantgate_twin_of": path.name})
    return out
