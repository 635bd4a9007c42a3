"""Runs learned rounding over a model's layers: bounded windows, same-shape batches, results in file order.

* Host memory: layers are read in windows of consecutive layers (``window_bytes`` of source weights);
  a window's results are yielded, in the order asked for, before the next window is read.
* Device memory: inside a window, layers of the same (format, shape) form batches whose optimiser state
  (about ``STATE_BYTES`` per weight plus the K x K Gram matrix) fits ``device_bytes``; a layer too big for
  the budget runs alone. One matmul (torch.bmm) per step serves the whole batch.
* Progress: a tqdm bar over weights (so its ETA is honest whatever the shapes), with layers done, the
  current batch's loss and its gain over RTN.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from ..device import Device
from . import learned as L

STATE_BYTES = 48          # float32 tensors alive per weight during optimise() (measured budget, see README)


@dataclass
class Job:
    name: str          # tensor name (…weight)
    layer: str
    action: str        # "fp8" | "nvfp4"
    shape: tuple       # (N, K)

    @property
    def numel(self) -> int:
        return int(self.shape[0]) * int(self.shape[1])


@dataclass
class Stats:
    layers: int = 0
    gains_db: dict = field(default_factory=dict)     # layer -> dB over RTN on its calibration rows
    iters: dict = field(default_factory=dict)
    calibrated: int = 0                              # layers that used recorded activations
    seconds: float = 0.0
    batches: list = field(default_factory=list)      # the layers optimised together, one list per batch

    def as_dict(self) -> dict:
        g = [v for v in self.gains_db.values() if math.isfinite(v)]
        return {"layers": self.layers, "calibrated_layers": self.calibrated,
                "mean_gain_db": round(sum(g) / len(g), 3) if g else 0.0,
                "min_gain_db": round(min(g), 3) if g else 0.0,
                "mean_iters": round(sum(self.iters.values()) / max(1, len(self.iters)), 1),
                "seconds": round(self.seconds, 2)}


def default_device_bytes(device: str) -> int:
    if Device.of(device).is_cuda:
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(min(24 << 30, free * 0.6))
    return 1 << 30


def windows(jobs: list[Job], window_bytes: int) -> list[list[Job]]:
    """Consecutive runs of ``jobs`` (file order) whose float32 weights fit in ``window_bytes`` (at least one)."""
    out, i = [], 0
    while i < len(jobs):
        j, size = i, 0
        while j < len(jobs) and (j == i or size + jobs[j].numel * 4 <= window_bytes):
            size += jobs[j].numel * 4
            j += 1
        out.append(jobs[i:j])
        i = j
    return out


def plan(jobs: list[Job], *, device: str = "cpu", window_bytes: int | None = None,
         device_bytes: int | None = None, state_bytes: int = STATE_BYTES,
         gram_bytes: int = 4) -> list[list[list[Job]]]:
    """What :func:`run` computes, in order: windows (host-memory bound, file order), each a list of batches
    (same format and shape, device-memory bound). A layer's result depends on the batch it is optimised in
    (one bmm per step: on CUDA the batch size picks the kernel), so the multi-device path hands whole
    batches of this plan to its workers: N devices write the same bytes as one. ``state_bytes`` per weight and
    ``gram_bytes`` per K x K entry: the device memory a layer holds while its batch runs (learned rounding's by
    default; GPTQ passes its own)."""
    dev_bytes = device_bytes or default_device_bytes(device)
    win = window_bytes or (4 << 30 if Device.of(device).is_cuda else 512 << 20)
    return [_batches(w, dev_bytes, state_bytes, gram_bytes) for w in windows(jobs, win)]


def run(jobs: list[Job], load, *, device: str = "cpu", cfg: L.LearnedConfig = L.LearnedConfig(),
        calibration=None, progress: bool = False, window_bytes: int | None = None,
        device_bytes: int | None = None, stats: Stats | None = None, backend=None, schedule=None):
    """Yield ``(job, tensors)`` for every job; ``tensors`` is what the kernel would return (fp8: (q, scale);
    nvfp4: (packed, block_scales, s2)), on the CPU. ``load(name)`` reads a weight. ``schedule`` (from
    :func:`plan`; default: the plan of ``jobs``) fixes the windows and batches; jobs come out window by
    window, in the order of ``jobs`` inside each window."""
    stats = stats if stats is not None else Stats()
    sched = schedule if schedule is not None else plan(jobs, device=device, window_bytes=window_bytes,
                                                       device_bytes=device_bytes)
    order = {j.name: i for i, j in enumerate(jobs)}
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(j.numel for w in sched for b in w for j in b), unit="w", unit_scale=True,
                   dynamic_ncols=True, desc="learned rounding", leave=False)
    t0 = time.perf_counter()
    try:
        for window in sched:
            results = {}
            for batch in window:
                _run_batch(batch, load, device, cfg, calibration, results, stats, bar, len(jobs), backend)
            for job in sorted((j for b in window for j in b), key=lambda j: order[j.name]):
                yield job, results.pop(job.name)
    finally:
        stats.seconds += time.perf_counter() - t0
        if bar is not None:
            bar.close()


def _batches(window: list[Job], dev_bytes: int, state_bytes: int = STATE_BYTES,
             gram_bytes: int = 4) -> list[list[Job]]:
    groups: dict[tuple, list[Job]] = {}
    for job in window:
        n, k = job.shape
        key = (job.action, n, k)
        groups.setdefault(key, []).append(job)
    out = []
    for (action, n, k), js in groups.items():
        per = (n + 16) * (k + 16) * state_bytes + (k + 16) ** 2 * gram_bytes
        cap = max(1, dev_bytes // per)
        for s in range(0, len(js), cap):
            out.append(js[s:s + cap])
    return out


def _run_batch(batch, load, device, cfg, calibration, results, stats, bar, total, backend):
    preps, hs = [], []
    for job in batch:
        w = load(job.name).to(device)
        p = L.prepare(job.action, w, name=job.name, backend=backend)
        kp = p.w.shape[1]
        if calibration is not None and job.layer in calibration:
            h = L.gram(calibration.rows(job.layer, job.shape[1]).to(device), cfg.damp)
            stats.calibrated += 1
        else:
            h = L.weight_proxy(w, cfg.damp)
        if kp != h.shape[0]:                       # NVFP4 padding of K: padded inputs carry nothing
            h = torch.nn.functional.pad(h, (0, kp - h.shape[0], 0, kp - h.shape[0]))
        preps.append(p)
        hs.append(h)
        del w
    action = batch[0].action

    def stack(attr):
        return torch.stack([getattr(p, attr) for p in preps])

    scale = torch.stack([p.scale.reshape(1, 1) if L.per_tensor(action) else p.scale for p in preps])
    h = torch.stack(hs)
    w, q_rtn, lo, step, frac = (stack(a) for a in ("w", "q_rtn", "lo", "step", "frac"))
    for p in preps:                                # keep only what encode() needs
        p.w = p.q_rtn = p.lo = p.step = p.frac = p.scale = None
    del hs

    def on_iter(it, l_rtn, l_best):
        if bar is not None:
            gain = 10 * math.log10(l_rtn / l_best) if l_best > 0 and l_rtn > 0 else 0.0
            bar.set_postfix_str(f"{stats.layers}/{total} layers, {len(batch)}x{list(batch[0].shape)} "
                                f"it {it} loss {l_best:.4g} ({gain:+.2f} dB)", refresh=False)
            bar.refresh()

    with _fast_matmul(device), _threads(device, sum(j.numel for j in batch)):
        best, l_rtn, l_best, iters = L.optimise(action, w, scale, q_rtn, lo, step, frac, h, cfg, on_iter)
    del w, q_rtn, lo, step, frac
    stats.batches.append([job.layer for job in batch])
    for b, (job, p) in enumerate(zip(batch, preps)):
        res = L.LayerResult(best[b], float(l_rtn[b]), float(l_best[b]), iters)
        results[job.name] = tuple(t.cpu() for t in L.encode(p, res.q))
        stats.gains_db[job.layer] = res.gain_db
        stats.iters[job.layer] = iters
        stats.layers += 1
        if bar is not None:
            bar.update(job.numel)
    del best, h, preps


class _fast_matmul:
    """TF32 matmuls on CUDA for the optimiser (the loss only steers; results are exact grid values)."""

    def __init__(self, device):
        self.on = Device.of(device).is_cuda

    def __enter__(self):
        if self.on:
            self.prev = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = True

    def __exit__(self, *exc):
        if self.on:
            torch.backends.cuda.matmul.allow_tf32 = self.prev
        return False


class _threads:
    """Small CPU batches run single-threaded: thread hand-offs cost more than the work (and on a busy
    2-core box they cost 10x or more)."""

    def __init__(self, device, numel):
        self.on = not Device.of(device).is_cuda and numel < (1 << 40)

    def __enter__(self):
        if self.on:
            self.prev = torch.get_num_threads()
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        if self.on:
            torch.set_num_threads(self.prev)
        return False
