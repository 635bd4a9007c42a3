"""Deterministic, seeded real-layout checkpoints for tests and the demo (nothing is committed).

Every tensor comes from ``torch.Generator().manual_seed(seed + index)`` over the names/shapes of a
:mod:`quant.arch` template, so the same call writes the same bytes on every machine:
  * >=2-D weights: randn / sqrt(fan_in), with a few outlier input channels (x8..x24) in Linear
    weights, as trained weights have;
  * norm weights: 1 (+ small noise); biases: randn * 0.02; modulation tables: randn / sqrt(dim).
Writing streams tensor by tensor, so large synthetic models need little memory.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from quant import arch as _arch
from quant.safetensors_io import AtomicWriter, dtype_name


def _fill(name: str, shape: tuple[int, ...], gen: torch.Generator, outliers: bool) -> torch.Tensor:
    if name.endswith("modulation"):
        return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    if len(shape) == 1:
        if "norm" in name or name.endswith(".scale"):
            return 1.0 + 0.05 * torch.randn(shape, generator=gen)
        return 0.02 * torch.randn(shape, generator=gen)
    fan_in = math.prod(shape[1:])
    w = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    if outliers and len(shape) == 2 and shape[1] >= 16:
        n_out = max(1, shape[1] // 128)
        cols = torch.randperm(shape[1], generator=gen)[:n_out]
        gains = 8.0 + 16.0 * torch.rand(n_out, generator=gen)
        w[:, cols] *= gains
    return w


def tensors(arch_name: str, seed: int = 0, dtype: torch.dtype = torch.bfloat16, outliers: bool = True):
    """Yield ``(name, tensor)`` of the seeded model, one at a time."""
    a = _arch.get(arch_name)
    for i, (name, shape) in enumerate(a.tensors()):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
        yield name, _fill(name, shape, gen, outliers).to(dtype)


def make_model(arch_name: str, path, seed: int = 0, dtype: torch.dtype = torch.bfloat16,
               outliers: bool = True, metadata: dict[str, str] | None = None) -> Path:
    """Write the seeded model to ``path`` (atomically) and return the path."""
    path = Path(path)
    a = _arch.get(arch_name)
    entries = [(n, dtype_name(dtype), s) for n, s in a.tensors()]
    with AtomicWriter(path, entries, metadata) as w:
        for name, t in tensors(arch_name, seed, dtype, outliers):
            w.write(name, t)
    return path


def make_sharded(arch_name: str, out_dir, n_shards: int = 3, seed: int = 0,
                 dtype: torch.dtype = torch.bfloat16, index: bool = True) -> Path:
    """Write the model as ``n_shards`` files (+ ``diffusion_pytorch_model.safetensors.index.json``)."""
    import json
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = list(tensors(arch_name, seed, dtype))
    per = math.ceil(len(items) / n_shards)
    weight_map = {}
    for s in range(n_shards):
        chunk = items[s * per:(s + 1) * per]
        fname = f"diffusion_pytorch_model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        from quant.safetensors_io import save_file
        save_file(dict(chunk), out_dir / fname)
        weight_map.update({k: fname for k, _ in chunk})
    if index:
        (out_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    return out_dir
