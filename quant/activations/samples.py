"""Activation SAMPLES for learned rounding: recorded input rows of each quantized Linear. (The
per-layer statistics that become input_scale are activation STATISTICS: :mod:`quant.activations.statistics`.)

File format (``convert --act-samples FILE``): a safetensors file (parsed by quantgate's own safe reader,
never a pickle) with one tensor ``<layer>.input`` per quantized Linear, shape [..., K] (rows are input
activations of that layer, any float dtype; leading dims are flattened). Header metadata
``quantgate.calibration = "activations"`` is written by :func:`save_samples`; it is not required.

At most ``samples`` rows per layer are kept (a bounded sample): when a layer has more, the rows are a
seeded random subset (seed = ``--seed`` mixed with the layer name, so the choice does not depend on the
order or the GPU a layer runs on). Layers without a tensor use the data-free proxy (learned.weight_proxy).
"""
from __future__ import annotations

import zlib
from pathlib import Path

import torch

from quant.errors import InputError
from quant.safetensors_io import save_file

SUFFIX = ".input"


class ActivationSamples:
    def __init__(self, path, samples: int, seed: int):
        from quant.inputs import activation_samples
        self.path = Path(path)
        # the one validated loader of activation files (issue 20): F16/BF16/F32 [..., K] with rows
        self._f = activation_samples(self.path)
        self.samples, self.seed = int(samples), int(seed)
        self.layers = {k[: -len(SUFFIX)] for k in self._f.keys() if k.endswith(SUFFIX)}

    def close(self):
        self._f.close()

    def __contains__(self, layer: str) -> bool:
        return layer in self.layers

    def rows(self, layer: str, k: int) -> torch.Tensor:
        """The bounded activation sample [m, k] (float32) of ``layer``."""
        name = layer + SUFFIX
        info = self._f.info(name)
        if not info.shape or info.shape[-1] != k:
            raise InputError(f"activations {name!r} have shape {list(info.shape)}; the layer takes {k} inputs",
                             self.path)
        try:
            x = self._f.get(name)
        except (TypeError, ValueError) as e:
            raise InputError(f"activations {name!r} cannot be read ({e})", self.path) from None
        if not x.is_floating_point():
            raise InputError(f"activations {name!r} are {x.dtype}, not floating point", self.path)
        x = x.reshape(-1, k)
        if x.shape[0] == 0:
            raise InputError(f"activations {name!r} have no rows", self.path)
        if not bool(torch.isfinite(x).all()):
            raise InputError(f"activations {name!r} contain inf/NaN", self.path)
        if x.shape[0] > self.samples:
            g = torch.Generator().manual_seed(layer_seed(self.seed, layer))
            idx = torch.randperm(x.shape[0], generator=g)[: self.samples].sort().values
            x = x[idx]
        return x.to(torch.float32)


def layer_seed(seed: int, layer: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(layer.encode())) % (2 ** 63)


def save_samples(samples: dict[str, torch.Tensor], path) -> None:
    """Write ``{layer: activations [M, K]}`` as a calibration file (atomic)."""
    save_file({f"{k}{SUFFIX}": v.contiguous() for k, v in samples.items()}, path,
              {"quantgate.calibration": "activations"})
