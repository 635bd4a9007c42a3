"""Learned rounding on several devices of one host: one worker process per GPU, one writer.

Whole batches of the one-device plan (:func:`engine.plan`) are split over the workers by estimated cost
(N*K^2 per step, greedy, deterministic), so every layer is optimised with the same companions as on one
device and N devices write the same bytes as one (also on CUDA, where the batch size picks the bmm kernel); each
worker opens the source itself, runs :func:`engine.run` on its device and streams its layers' tensors
into a shard file (atomic writer) in a private temp directory beside the output. The parent process
waits for every worker, then is the ONE writer: it assembles the output in file order from the shards
(and the source for kept tensors). No tensors cross process boundaries except through those shards, so
no NCCL collective is needed; workers are started with the 'spawn' method (CUDA-safe) and work for
any number of devices, including N CPU processes (how the tests exercise this path).
"""
from __future__ import annotations

import json
import os
import shutil
import traceback
from pathlib import Path

from ..device import Device
from ..errors import InputError, QuantgateError
from ..safetensors_io import AtomicWriter, SafetensorsFile
from ..kernels.nvfp4 import packed_shape as nvfp4_packed_shape
from ..kernels.nvfp4 import scale_shape as nvfp4_scale_shape


def assign(batches, world: int) -> list[list]:
    """Greedy longest-first split of whole batches (of :func:`engine.plan`) by cost (N*K^2 per layer and
    step); each worker's list keeps plan order. Splitting batches, never layers out of a batch, keeps every
    layer's arithmetic what the one-device run does: N devices write the same bytes as one."""
    load = [0] * world
    parts: list[list[int]] = [[] for _ in range(world)]
    cost = [sum(j.shape[0] * j.shape[1] ** 2 for j in b) for b in batches]
    for i in sorted(range(len(batches)), key=lambda i: (-cost[i], i)):
        r = min(range(world), key=lambda x: (load[x], x))
        parts[r].append(i)
        load[r] += cost[i]
    return [[batches[i] for i in sorted(p)] for p in parts]


def _entries(job) -> list[tuple[str, str, tuple]]:
    n, k = job.shape
    from .learned import per_tensor
    if per_tensor(job.action):
        return [(f"{job.name}.q", "F8_E4M3", (n, k)), (f"{job.name}.s", "F32", ())]
    return [(f"{job.name}.q", "U8", tuple(nvfp4_packed_shape(n, k))),
            (f"{job.name}.s", "F8_E4M3", tuple(nvfp4_scale_shape(n, k))), (f"{job.name}.s2", "F32", ())]


def _worker(rank: int, source: str, batches, device: str, cfg, calib_path, shard: str, err: str, progress: bool,
            parent: int | None = None):
    if parent is not None:                 # die with the converter, even when it is SIGKILLed (issue 20)
        from ..lifetime import die_with_parent
        die_with_parent(parent)
    import torch

    from ..sources import open_source
    from . import engine
    from quant.activations.samples import ActivationSamples
    try:
        if Device.of(device).is_cuda:
            torch.cuda.set_device(torch.device(device))
        jobs = [j for b in batches for j in b]
        entries = [e for j in jobs for e in _entries(j)]
        calib = ActivationSamples(calib_path, cfg.samples, cfg.seed) if calib_path else None
        stats = engine.Stats()
        with open_source(source) as src, AtomicWriter(shard, entries, {}) as w:
            for job, tensors in engine.run(jobs, src.get, device=device, cfg=cfg, calibration=calib,
                                           progress=progress, stats=stats, schedule=[[b] for b in batches]):
                for (name, _, _), t in zip(_entries(job), tensors):
                    w.write(name, t)
        Path(shard + ".json").write_text(json.dumps({"gains_db": stats.gains_db, "iters": stats.iters,
                                                     "calibrated": stats.calibrated, "batches": stats.batches}))
    except QuantgateError as e:
        Path(err).write_text(json.dumps({"problem": e.problem, "path": e.path}))
        raise SystemExit(2)
    except BaseException:
        Path(err).write_text(json.dumps({"problem": "worker failed: " + traceback.format_exc(limit=3).strip()
                                         .splitlines()[-1], "path": None}))
        raise SystemExit(3)


def run(jobs, source, out: Path, *, world: int, device: str, cfg, calibration=None, progress=False,
        stats=None):
    """Yield ``(job, tensors)`` in job order, computed by ``world`` worker processes."""
    import torch.multiprocessing as mp

    from . import engine
    parts = assign([b for w in engine.plan(jobs, device=device) for b in w], world)
    devices = [f"cuda:{r}" if Device.of(device).is_cuda else "cpu" for r in range(world)]
    from ..outputs import remove_stale_partials, temp_dir
    remove_stale_partials(out)             # shard directories of SIGKILLed runs
    tmp = temp_dir(out)                    # carries our pid: the next write removes it if we are killed
    try:
        ctx = mp.get_context("spawn")
        procs = []
        for r in range(world):
            a = (r, str(source), parts[r], devices[r], cfg, str(calibration) if calibration else None,
                 str(tmp / f"rank{r}.safetensors"), str(tmp / f"rank{r}.err"), progress, os.getpid())
            p = ctx.Process(target=_worker, args=a, daemon=True)
            p.start()
            procs.append(p)
        try:
            for p in procs:
                p.join()
        finally:
            for p in procs:                      # interrupted: stop the workers we started
                if p.is_alive():
                    p.terminate()
                    p.join()
        for r, p in enumerate(procs):
            if p.exitcode != 0:
                ef = tmp / f"rank{r}.err"
                e = json.loads(ef.read_text()) if ef.exists() else {"problem": f"worker {r} died "
                                                                    f"(exit code {p.exitcode})", "path": None}
                raise InputError(e["problem"], e["path"])
        shards = {}
        for r in range(world):
            f = SafetensorsFile(tmp / f"rank{r}.safetensors")
            if stats is not None:
                s = json.loads((tmp / f"rank{r}.safetensors.json").read_text())
                stats.gains_db.update(s["gains_db"])
                stats.iters.update(s["iters"])
                stats.calibrated += s["calibrated"]
                stats.batches.extend(s["batches"])
                stats.layers += len(s["gains_db"])
            for b in parts[r]:
                for j in b:
                    shards[j.name] = f
        try:
            for job in jobs:
                f = shards[job.name]
                yield job, tuple(f.get(name) for name, _, _ in _entries(job))
        finally:
            for f in set(shards.values()):
                f.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
