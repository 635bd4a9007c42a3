"""Planted quality defects (issue 21): format-valid files -- right names, dtypes, shapes, swizzle, both
carriers -- whose renders are visibly worse than a plain conversion's. The format gate without the
source cannot see most of them; the render gate must fail them on the render alone (``gate --no-verify``).

Each factory reads a good file and writes a damaged copy (atomic, the input is never modified):

* :func:`scale_inputs` -- every calibrated ``input_scale`` multiplied by ``factor`` (0.5 .. 1/16: the
  activation clip level too low, NVFP4 block scales saturate / fp8 inputs clip at 448);
* :func:`shift_block_scales` -- every NVFP4 e4m3 block scale moved ``codes`` codes down (8 codes = /2);
* :func:`global_scale_up` -- NVFP4 ``weight_scale_2`` x 2**k and the block scales / 2**k (cast back to e4m3):
  k = 1 is exactly equivalent (a good file), large k underflows the small blocks' scales to zero;
* :func:`coarse_fp8` -- fp8 per-tensor scale x ``factor`` with the weights re-quantized on that grid (a coarse
  grid in a valid file: small weights fall into e4m3's subnormals or to zero).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from quant.safetensors_io import SafetensorsFile, save_file

QUANT_KEY = "_quantization_metadata"


def _load(path) -> tuple[dict, dict]:
    with SafetensorsFile(path) as f:
        return {k: f.get(k).clone() for k in f.keys()}, dict(f.metadata)


def _layers(meta: dict, fmt: str | None = None) -> dict:
    q = json.loads(meta.get(QUANT_KEY) or "{}").get("layers", {})
    return {k: v for k, v in q.items() if fmt is None or v.get("format") == fmt}


def _save(t: dict, meta: dict, out, what: str) -> Path:
    meta = dict(meta)
    meta["quantgate.planted"] = what
    save_file(t, out, meta)
    return Path(out)


def scale_inputs(path, out, factor: float) -> Path:
    """Every ``<layer>.input_scale`` x ``factor`` (fp8 and NVFP4 layers of a calibrated comfy_quant file)."""
    t, m = _load(path)
    keys = [k for k in t if k.endswith(".input_scale")]
    if not keys:
        raise ValueError(f"{path}: no input_scale to scale (convert with --calibration)")
    for k in keys:
        t[k] = (t[k].float() * float(factor)).to(t[k].dtype)
    return _save(t, m, out, f"input_scale x {factor:g}")


def _nvfp4_layers(t: dict, m: dict) -> list[str]:
    out = [L for L in _layers(m, "nvfp4") if f"{L}.weight_scale_2" in t]
    if not out:
        raise ValueError("no NVFP4 layer")
    return out


def shift_block_scales(path, out, codes: int) -> Path:
    """Every NVFP4 block scale ``codes`` e4m3 codes lower (bit pattern - codes, floored at code 0)."""
    t, m = _load(path)
    for L in _nvfp4_layers(t, m):
        bs = t[f"{L}.weight_scale"]
        u = (bs.view(torch.uint8).to(torch.int16) - int(codes)).clamp(min=0)   # positive codes; padding stays 0
        t[f"{L}.weight_scale"] = u.to(torch.uint8).view(bs.dtype)
    return _save(t, m, out, f"nvfp4 block scales - {codes} e4m3 codes")


def global_scale_up(path, out, k: int) -> Path:
    """NVFP4 ``weight_scale_2`` x 2**k, block scales / 2**k (rounded to e4m3; scales below e4m3's smallest
    subnormal become 0). k = 1 is an exactly equivalent file."""
    t, m = _load(path)
    for L in _nvfp4_layers(t, m):
        bs = t[f"{L}.weight_scale"]
        t[f"{L}.weight_scale"] = (bs.float() / 2.0 ** k).to(bs.dtype)
        s2 = t[f"{L}.weight_scale_2"]
        t[f"{L}.weight_scale_2"] = (s2.float() * 2.0 ** k).to(s2.dtype)
    return _save(t, m, out, f"nvfp4 global scale x 2^{k}, block scales / 2^{k}")


def coarse_fp8(path, out, factor: float) -> Path:
    """Every fp8 layer's per-tensor scale x ``factor``, weights re-quantized on that coarser grid (comfy_quant
    ``weight_scale`` and legacy ``scale_weight`` files)."""
    t, m = _load(path)
    fp8_layers = list(_layers(m, "float8_e4m3fn"))
    legacy = [k[: -len(".scale_weight")] for k in t if k.endswith(".scale_weight")]
    n = 0
    for L, sk in [(L, f"{L}.weight_scale") for L in fp8_layers] + [(L, f"{L}.scale_weight") for L in legacy]:
        if sk not in t or t[f"{L}.weight"].dtype != torch.float8_e4m3fn:
            continue
        s = t[sk].float()
        w = t[f"{L}.weight"].float() * s.reshape(-1)[0]
        s2 = s * float(factor)
        t[f"{L}.weight"] = (w / s2.reshape(-1)[0]).clamp(-448, 448).to(torch.float8_e4m3fn)
        t[sk] = s2.to(t[sk].dtype)
        n += 1
    if not n:
        raise ValueError(f"{path}: no fp8 layer")
    return _save(t, m, out, f"fp8 per-tensor scale x {factor:g} (weights re-quantized)")
