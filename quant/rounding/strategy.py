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
            from quant.activations.samples import Calibration
            calib = Calibration(self.calibration, self.cfg.samples, self.cfg.seed) if self.calibration else None
            gen = engine.run(ejobs, lambda name: by_name[name].load(), device=str(device), cfg=self.cfg,
                             calibration=calib, progress=self.progress, stats=self.stats, backend=backend)
        try:
            for ej, t in gen:
                job = by_name[ej.name]
                if ej.action == "fp8":
                    raw = {"weight": t[0], job.fmt.decode_scale_key: t[1]}
                else:
                    raw = {"weight": t[0], "weight_scale": t[1], "weight_scale_2": t[2]}
                yield job, raw
        finally:
            gen.close()
            if calib is not None:
                calib.close()
