"""Quantize a sequence of layers: the converter hands over jobs, a rounding strategy and a kernel
backend decide how (one at a time, batched on a GPU, with calibration data), the results come back in
job order as the tensors ComfyUI expects.

    results = quantize_layers(jobs, device="cuda")          # lazy: jobs load their weight on demand
    for r in results: write(r.tensors)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from . import rounding as _rounding
from .formats import Format
from .kernels import get_backend


@dataclass
class LayerJob:
    layer: str                          # the layer name ("blocks.0.ffn.0")
    name: str                           # the source weight's tensor name (errors name it)
    fmt: Format                         # the format this layer is written in
    load: Callable[[], object]          # reads the source weight when the strategy needs it
    input_amax: float | None = None     # calibrated activation amax -> input scale
    shape: tuple[int, ...] = ()         # the source weight's shape (strategies may plan batches with it)
    weight_only: bool | None = None     # force full_precision_matrix_mult on/off (None: the format's default)


@dataclass
class LayerResult:
    job: LayerJob
    tensors: dict                       # key -> CPU tensor, in the order of the format's layer_entries


def quantize_layers(jobs: Iterable[LayerJob], *, device: str = "cpu", backend: str | None = None,
                    rounding: str | None = None) -> Iterator[LayerResult]:
    """Yield one :class:`LayerResult` per job, in job order. ``backend``: a kernel backend name (default:
    the best available on ``device``); ``rounding``: a strategy name (default ``rtn``)."""
    be = get_backend(device, backend)
    strategy = _rounding.get(rounding)
    for job, raw in strategy.quantize(jobs, backend=be, device=device):
        tensors = job.fmt.layer_tensors(job.layer, raw, input_amax=job.input_amax, weight_only=job.weight_only)
        del raw
        yield LayerResult(job, tensors)


__all__ = ["LayerJob", "LayerResult", "quantize_layers"]
