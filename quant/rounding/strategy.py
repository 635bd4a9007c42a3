"""The ``learned`` rounding strategy: quant.quantize's seam (``quantize(jobs, backend=, device=)``)
over the learned-rounding engine (one process) or its multi-device path (one worker per device).

Configured per conversion (calibration file, seed, steps, devices), so convert builds an instance and
hands it to ``quantize_layers(rounding=...)``; the registered default instance is data-free, 1 device.
"""
from __future__ import annotations

from pathlib import Path


class Learned:
    """Registered at import time, so it imports torch (engine, learned) only when it runs."""
    name = "learned"

    def __init__(self, cfg=None, calibration=None, *, gpus: int = 1, source=None, output=None,
                 progress: bool = False):
        self.cfg = cfg                          # a learned.LearnedConfig (None: its defaults)
        self.calibration = calibration          # path of an activations file, or None (data-free proxy)
        self.gpus, self.source, self.output, self.progress = int(gpus), source, output, progress
        self.stats = None

    def quantize(self, jobs, *, backend, device="cpu"):
        from . import engine
        from .learned import LearnedConfig
        self.cfg = self.cfg or LearnedConfig()
        self.stats = engine.Stats()
        jobs = list(jobs)
        by_name = {j.name: j for j in jobs}
        ejobs = [engine.Job(j.name, j.layer, j.fmt.kernel, tuple(j.shape)) for j in jobs]
        if self.gpus > 1:
            from . import multigpu
            if self.source is None or self.output is None:
                raise ValueError("the multi-device path needs the source path and the output path")
            gen = multigpu.run(ejobs, self.source, Path(self.output), world=self.gpus, device=str(device),
                               cfg=self.cfg, calibration=self.calibration, progress=self.progress, stats=self.stats)
            calib = None
        else:
            from quant.activations.samples import ActivationSamples
            calib = ActivationSamples(self.calibration, self.cfg.samples, self.cfg.seed) if self.calibration else None
            gen = engine.run(ejobs, lambda name: by_name[name].load(), device=str(device), cfg=self.cfg,
                             calibration=calib, progress=self.progress, stats=self.stats, backend=backend)
        try:
            for ej, t in gen:
                job = by_name[ej.name]
                f = job.fmt                  # the kernel's order: codes, [block scales,] the per-tensor scale
                yield job, dict(zip(("weight", *filter(None, (f.block_scale_key,)), f.decode_scale_key), t))
        finally:
            gen.close()
            if calib is not None:
                calib.close()


class _Samples:
    """Recorded activation rows per layer (the '<layer>.input' file) and their Gram matrices, read lazily."""

    def __init__(self, path, samples: int, seed: int):
        from quant.activations.samples import ActivationSamples
        self.cal = ActivationSamples(path, samples, seed) if path else None

    def gram(self, layer: str, k: int, device):
        import torch
        if self.cal is None or layer not in self.cal:
            return None
        x = self.cal.rows(layer, k).to(device=device, dtype=torch.float32)
        return x.T @ x / max(1, x.shape[0])

    def close(self):
        if self.cal is not None:
            self.cal.close()


GPTQ_STATE_BYTES = 24
GPTQ_GRAM_BYTES = 16
GPTQ_CUDA_WINDOW = 6 << 30


class Gptq:
    """``--rounding gptq``: Hessian-aware rounding (quant.rounding.gptq) from recorded activations; same-shape
    layers run as one batch inside host-memory windows (engine.plan's schedule), results in job order.
    NVFP4 block scales by ``cfg.scale_search``. Every NVFP4 / FP8 layer needs recorded rows (convert checks);
    layers of other formats (int8 in a --budget-bits mix) are rounded to nearest by their format."""
    name = "gptq"

    def __init__(self, cfg=None, calibration=None, *, progress: bool = False):
        self.cfg, self.calibration, self.progress = cfg, calibration, progress
        self.stats = {"layers": 0, "seconds": 0.0}

    def quantize(self, jobs, *, backend, device="cpu"):
        import time

        import torch

        from ..device import Device
        from . import engine, gptq
        cfg = self.cfg or gptq.GptqConfig()
        jobs = list(jobs)
        by_name = {j.name: j for j in jobs}
        order = {j.name: i for i, j in enumerate(jobs)}
        ejobs = [engine.Job(j.name, j.layer, j.fmt.kernel, tuple(j.shape)) for j in jobs]
        dev = str(device)
        # device state per weight: the stacked source, W, its source copy, the result (float32) and the block
        # temporaries (~24 B); per K x K entry: H, its damped copy, the Cholesky factors and U (~16 B).
        # On CUDA the windows hold 6 GiB of float32 weights (4.6 real-size A14B blocks, vs 2.9 at the learned
        # engine's 4 GiB): the column loop is paid once per batch, and the same-shape layers of 4 blocks run as
        # one batch (H100: 4 A14B blocks 9.9 s vs one block 7.2 s, benchmarks/results/h100-gptq-a14b-speed-*.json)
        sched = engine.plan(ejobs, device=dev, window_bytes=GPTQ_CUDA_WINDOW if Device.of(dev).is_cuda else None,
                            state_bytes=GPTQ_STATE_BYTES, gram_bytes=GPTQ_GRAM_BYTES)
        samples = _Samples(self.calibration, cfg.samples, cfg.seed)
        bar = None
        if self.progress:
            from tqdm import tqdm
            bar = tqdm(total=len(jobs), desc="gptq rounding", unit="layer", leave=False, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            for window in sched:
                results = {}
                for batch in window:
                    if batch[0].action not in gptq.GRIDS:     # e.g. int8 layers of a --budget-bits mix: RTN
                        for j in batch:
                            job = by_name[j.name]
                            results[j.name] = job.fmt.quantize(job.load().to(dev), backend=backend, name=j.name)
                        self.stats["layers"] += len(batch)
                        if bar is not None:
                            bar.update(len(batch))
                        continue
                    ws = [by_name[j.name].load().to(dev) for j in batch]
                    hs = [samples.gram(j.layer, j.shape[1], dev) for j in batch]
                    missing = [j.layer for j, h in zip(batch, hs) if h is None]
                    if missing:
                        from ..errors import InputError
                        raise InputError(f"gptq rounding needs recorded activations for every quantized layer; "
                                         f"none for {missing[0]!r}", self.calibration)
                    out = gptq.quantize_batch(batch[0].action, torch.stack(ws), torch.stack(hs), cfg)
                    for j, t in zip(batch, out):
                        results[j.name] = tuple(x.cpu() for x in t)
                    self.stats["layers"] += len(batch)
                    if bar is not None:
                        bar.update(len(batch))
                    del ws, hs, out
                for ej in sorted((j for b in window for j in b), key=lambda j: order[j.name]):
                    job, t = by_name[ej.name], results.pop(ej.name)
                    yield job, (t if isinstance(t, dict) else _raw(job, ej.action, t))
        finally:
            self.stats["seconds"] = round(time.perf_counter() - t0, 2)
            samples.close()
            if bar is not None:
                bar.close()


SEARCHED = frozenset({"nvfp4"})        # kernels with per-block scales to search (scale_search.py)


class SearchedRtn:
    """Round-to-nearest with searched NVFP4 scales (quant.rounding.scale_search): ``objective`` "mse" (block
    weight error) or "output" (block output error, from recorded activations; layers without rows fall back
    to "mse"). FP8 layers are plain RTN (one per-tensor scale: nothing to search)."""
    name = "rtn"

    def __init__(self, objective: str = "mse", calibration=None, samples: int = 4096, seed: int = 0):
        self.objective, self.calibration, self.samples, self.seed = objective, calibration, samples, seed

    def quantize(self, jobs, *, backend, device="cpu"):
        from . import scale_search
        samples = _Samples(self.calibration if self.objective == "output" else None, self.samples, self.seed)
        try:
            for job in jobs:
                w = job.load()
                if str(device) != "cpu":
                    w = w.to(device)
                if job.fmt.kernel in SEARCHED:
                    h = samples.gram(job.layer, w.shape[1], w.device) if self.objective == "output" else None
                    t = scale_search.quantize(w, h=h, objective="output" if h is not None else "mse")
                    raw = _raw(job, job.fmt.kernel, t)
                else:
                    raw = job.fmt.quantize(w, backend=backend, name=job.name)
                del w
                yield job, raw
        finally:
            samples.close()


def _raw(job, action, t) -> dict:
    """A kernel's tensors as the format's {suffix: tensor}: fp8 (q, scale), nvfp4 (packed, block scales, s2)."""
    keys = ("weight", job.fmt.decode_scale_key) if len(t) == 2 else ("weight", "weight_scale", "weight_scale_2")
    return dict(zip(keys, t))
