"""Pipelined conversion: disk reads, host<->device copies, kernels and disk writes overlap.

    reader thread --> compute (this thread) --> writer thread
    pread into a       GPU: H2D, kernels and D2H     waits for each item in plan order,
    host ring buffer   on three CUDA streams;        checks it, writes it through the
    (pinned on GPU)    CPU: a pool of worker threads  AtomicWriter, frees its buffers

* Reads go straight from the file into one preallocated ring buffer (``os.preadv``, no Python
  object per tensor); runs of small tensors that lie back to back in a file are read at once.
* Host memory is bounded: the read ring holds 2 x the largest tensor, the GPU output ring 2 x the
  largest quantized output; a full ring makes the stage before it wait.
* The output is byte-identical to the serial loop: the same plan order, the same layer tensors
  (the format objects' layer_tensors), the same bit-exact kernels.
* Non-finite weights are found from the amax the kernels compute anyway (no host sync per layer)
  and end the conversion with the same one-line InputError as the serial path.
"""
from __future__ import annotations

import math
import os
import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .device import Device
from .errors import InputError
from .safetensors_io import TORCH_DTYPES

SMALL = 1 << 20            # tensors below this are read in batches
BATCH = 16 << 20           # up to this many bytes per batched read
ALIGN = 64


class _Abort(Exception):
    pass


class Ring:
    """FIFO allocator over one byte buffer (pinned for CUDA copies). ``alloc`` blocks until the
    oldest allocations are freed; frees may come in any order, space returns in FIFO order."""

    def __init__(self, nbytes: int, pinned: bool, abort: threading.Event):
        self.cap = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        self.buf = torch.empty(self.cap, dtype=torch.uint8, pin_memory=pinned)
        self._live: deque = deque()          # [start, end, freed]
        self._cond = threading.Condition()
        self._abort = abort

    def _fit(self, n: int):
        if not self._live:
            return 0
        first, last = self._live[0][0], self._live[-1][1]
        if self._live[-1][0] >= first:      # not wrapped: free space after last, and before first
            if last + n <= self.cap:
                return last
            return 0 if n <= first else None
        return last if last + n <= first else None

    def alloc(self, nbytes: int):
        n = max(ALIGN, -(-nbytes // ALIGN) * ALIGN)
        if n > self.cap:
            raise ValueError(f"ring of {self.cap} bytes cannot hold {nbytes}")
        with self._cond:
            while True:
                if self._abort.is_set():
                    raise _Abort()
                pos = self._fit(n)
                if pos is not None:
                    rec = [pos, pos + n, False]
                    self._live.append(rec)
                    return rec
                self._cond.wait(0.05)

    def view(self, rec, offset: int, nbytes: int) -> torch.Tensor:
        return self.buf[rec[0] + offset: rec[0] + offset + nbytes]

    def free(self, rec) -> None:
        with self._cond:
            rec[2] = True
            while self._live and self._live[0][2]:
                self._live.popleft()
            self._cond.notify_all()


@dataclass
class _Item:
    decision: object
    file: str
    begin: int
    nbytes: int
    dtype: torch.dtype
    shape: tuple


class _Shared:
    """A read buffer shared by a batch of small tensors: freed when the last one is written."""

    def __init__(self, ring: Ring, rec, refs: int):
        self.ring, self.rec, self.refs = ring, rec, refs
        self._lock = threading.Lock()

    def release(self):
        with self._lock:
            self.refs -= 1
            last = self.refs == 0
        if last:
            self.ring.free(self.rec)


def supports(src) -> bool:
    """The pipeline reads safetensors sources directly; others (GGUF) take the serial loop."""
    return hasattr(src, "span") and hasattr(src, "pread_into")


def _groups(items: list[_Item]):
    """Consecutive small items that lie back to back in one file -> one read."""
    group: list[_Item] = []
    for it in items:
        if group and (it.nbytes >= SMALL or it.file != group[-1].file
                      or it.begin != group[-1].begin + group[-1].nbytes
                      or it.begin + it.nbytes - group[0].begin > BATCH):
            yield group
            group = []
        group.append(it)
        if it.nbytes >= SMALL:
            yield group
            group = []
    if group:
        yield group


def _as_tensor(raw: torch.Tensor, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    if raw.numel() == 0:
        return torch.empty(shape, dtype=dtype)
    if raw.data_ptr() % raw.new_empty((), dtype=dtype).element_size():
        raw = raw.clone()                      # misaligned in the file: copy once
    return raw.view(dtype).reshape(shape)


def _get(q: queue.Queue, abort: threading.Event):
    while True:
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            if abort.is_set():
                raise _Abort() from None


def _put(q: queue.Queue, x, abort: threading.Event):
    while True:
        try:
            return q.put(x, timeout=0.05)
        except queue.Full:
            if abort.is_set():
                raise _Abort() from None


def run(src, decisions, fmt, writer, *, device: str = "cpu", backend: str | None = None,
        amax: dict | None = None, progress=None, workers: int | None = None) -> dict:
    """Quantize ``decisions`` (plan order) from ``src`` into format ``fmt`` (quant.formats; a layer's
    own format is ``fmt.for_action(action)``) with kernel backend ``backend`` (default: the best on
    ``device``; round-to-nearest) and ``writer.write`` every output tensor in order.
    ``progress(nbytes)`` is called after each source tensor is written. Returns stats."""
    from .kernels import get_backend
    be = get_backend(device, backend)
    items = _items(src, decisions)
    if not items:
        return {"read_ring_bytes": 0, "out_ring_bytes": 0}
    r = _Run(src, items, fmt, writer, device, amax or {}, progress)
    r.go(be, workers)
    return {"read_ring_bytes": r.rring.cap, "out_ring_bytes": r.oring.cap if r.oring else 0}


def _items(src, decisions) -> list[_Item]:
    items = []
    for d in decisions:
        f, b, e = src.span(d.name)
        info = src.info(d.name)
        items.append(_Item(d, f, b, e - b, TORCH_DTYPES[info.dtype], tuple(info.shape)))
    return items


class _Run:
    """One pipelined conversion: the reader and writer threads around the compute loop (this thread).
    The first error of any stage sets ``abort`` (every stage stops) and is raised to the caller."""

    def __init__(self, src, items: list[_Item], fmt, writer, device: str, amax: dict, progress):
        self.src, self.items, self.fmt, self.writer = src, items, fmt, writer
        self.device, self.amax, self.progress = device, amax, progress
        self.cuda = Device.of(device).is_cuda
        self.abort = threading.Event()
        self.errors: list[BaseException] = []
        largest = max(max(it.nbytes for it in items), min(BATCH, sum(it.nbytes for it in items)))
        self.rring = Ring(2 * largest, self.cuda, self.abort)
        self.oring = None
        if self.cuda:
            out_largest = max(_out_bytes(fmt, it) for it in items)
            self.oring = Ring(2 * out_largest + 4 * ALIGN, True, self.abort)
        self.in_q: queue.Queue = queue.Queue()
        self.out_q: queue.Queue = queue.Queue(maxsize=64)

    def fail(self, e: BaseException):
        if not isinstance(e, _Abort):
            self.errors.append(e)
        self.abort.set()

    def reader(self):
        from . import startup
        warm = startup.current()
        try:
            startup.mark("first_read")
            for group in _groups(self.items):
                start, total = group[0].begin, group[-1].begin + group[-1].nbytes - group[0].begin
                rec = self.rring.alloc(total)
                raw = self.rring.view(rec, 0, total)
                if total:
                    self.src.pread_into(group[0].file, start, memoryview(raw.numpy()).cast("B"))
                if warm is not None:
                    warm.consumed(sum(it.nbytes for it in group))
                shared = _Shared(self.rring, rec, len(group))
                for it in group:
                    t = _as_tensor(raw[it.begin - start: it.begin - start + it.nbytes], it.dtype, it.shape)
                    _put(self.in_q, (it, t, shared), self.abort)
            _put(self.in_q, None, self.abort)
        except BaseException as e:    # noqa: BLE001 - handed to the caller's thread
            self.fail(e)

    def writer_loop(self):
        try:
            while True:
                job = _get(self.out_q, self.abort)
                if job is None:
                    return
                kind, it, t, shared, payload = job
                if kind == "keep":
                    self.writer.write(it.decision.name, t)
                else:
                    self._write_quantized(kind, it, t, payload)
                shared.release()
                if self.progress is not None:
                    self.progress(it.nbytes)
        except BaseException as e:    # noqa: BLE001
            self.fail(e)

    def _write_quantized(self, kind: str, it: _Item, t: torch.Tensor, payload):
        d = it.decision
        orec = None
        try:
            if kind == "gpu":
                ev, raw, amax_h, orec = payload
                ev.synchronize()
                if amax_h is not None and not math.isfinite(float(amax_h)):
                    bad = int((~torch.isfinite(t)).sum())
                    raise InputError(f"tensor has {bad} non-finite values (inf/NaN); "
                                     "refusing to quantize", d.name)
            else:
                raw = payload.result()
        except InputError as e:           # name the file, not only the tensor
            raise InputError(f"tensor {d.name!r}: {e.problem}", it.file) from None
        lf = self.fmt.for_action(d.action)
        for k, v in lf.layer_tensors(d.layer, raw, input_amax=self.amax.get(d.layer)).items():
            self.writer.write(k, v)
        if orec is not None:
            self.oring.free(orec)

    def go(self, be, workers: int | None):
        threads = [threading.Thread(target=self.reader, name="qg-read", daemon=True),
                   threading.Thread(target=self.writer_loop, name="qg-write", daemon=True)]
        for th in threads:
            th.start()
        pool = None
        threads_before = torch.get_num_threads()
        try:
            if self.cuda:
                gpu = _Gpu(self.device, self.fmt, be, self.oring)
            else:
                # CPU: one tensor per worker thread, each running torch single-threaded. Parallel across
                # tensors instead of inside every small op: no per-op thread barrier, which on a busy
                # machine costs more than the op (measured: 3x slower with 2 intra-op threads under load).
                n = workers or max(1, min(threads_before, os.cpu_count() or 1, 8))
                torch.set_num_threads(1)
                pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="qg-quant")
            self._compute(be, gpu if self.cuda else None, pool)
            threads[1].join()
        except BaseException as e:
            self.fail(e)
        finally:
            self.abort.set() if self.errors else None
            for th in threads:
                th.join()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
                torch.set_num_threads(threads_before)
        if self.errors:
            raise self.errors[0]

    def _compute(self, be, gpu, pool):
        while True:
            job = _get(self.in_q, self.abort)
            if job is None:
                break
            it, t, shared = job
            d = it.decision
            if d.action == "keep":
                _put(self.out_q, ("keep", it, t, shared, None), self.abort)
            elif gpu is not None:
                try:
                    launched = gpu.launch(d, t)
                except InputError as e:        # a backend that checks on the spot
                    raise InputError(f"tensor {d.name!r}: {e.problem}", it.file) from None
                _put(self.out_q, ("gpu", it, t, shared, launched), self.abort)
            else:
                fut = pool.submit(_cpu_quantize, self.fmt, be, d, t)
                _put(self.out_q, ("cpu", it, t, shared, fut), self.abort)
        _put(self.out_q, None, self.abort)


def _cpu_quantize(fmt, be, d, t: torch.Tensor) -> dict:
    return fmt.for_action(d.action).quantize(t, backend=be, name=d.name)


def _out_bytes(fmt, it: _Item) -> int:
    d = it.decision
    if d.action == "keep":
        return 0
    n, k = it.shape[0], it.shape[1]
    lf = fmt.for_action(d.action)
    return sum(math.prod(shape) * TORCH_DTYPES[dt].itemsize + ALIGN for _, dt, shape in lf.entries("x", n, k)) \
        + 2 * ALIGN


class _Gpu:
    """H2D, kernels and D2H of one layer on three CUDA streams; returns an event and host views.
    Where a backend of the kernel seam takes the layer's ``*_async`` op (triton) nothing waits for the GPU;
    otherwise the format's synchronous ops run on the kernel stream as they are (they may synchronize)."""

    def __init__(self, device: str, fmt, be, oring: Ring):
        from . import startup
        from .kernels import ASYNC_OPS
        if startup.current() is not None:
            startup.current().wait_gpu()       # its kernels were loaded in the background (quant.startup)
        dev = torch.device(device)
        self.dev = dev if dev.index is not None else torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(self.dev)
        self.fmt, self.be, self.oring = fmt, be, oring
        self.fast = be.implements(*ASYNC_OPS)
        self.h2d = torch.cuda.Stream(self.dev)
        self.comp = torch.cuda.Stream(self.dev)
        self.d2h = torch.cuda.Stream(self.dev)

    def _kernels(self, d, x: torch.Tensor):
        """-> ({suffix: device tensor}, amax or None)."""
        from .kernels import NoKernel
        lf = self.fmt.for_action(d.action)
        if self.fast:
            try:
                fast = lf.quantize_async(self.be, x)     # no sync; None: the format has no async path
            except NoKernel:                              # no backend takes this tensor (dtype, size)
                fast = None
            if fast is not None:
                return fast
        return lf.quantize(x, backend=self.be, name=d.name), None

    def launch(self, d, host: torch.Tensor):
        with torch.cuda.stream(self.h2d):
            x = torch.empty(host.shape, dtype=host.dtype, device=self.dev)
            x.copy_(host, non_blocking=True)
            e1 = torch.cuda.Event()
            e1.record(self.h2d)
        self.comp.wait_event(e1)
        with torch.cuda.stream(self.comp):
            x.record_stream(self.comp)
            raw, amax = self._kernels(d, x)
            e2 = torch.cuda.Event()
            e2.record(self.comp)
        keys = list(raw)
        tensors = [raw[k] for k in keys] + ([amax.reshape(())] if amax is not None else [])
        sizes = [t.numel() * t.element_size() for t in tensors]
        offs, pos = [], 0
        for s in sizes:
            offs.append(pos)
            pos += -(-s // ALIGN) * ALIGN
        rec = self.oring.alloc(pos)
        self.d2h.wait_event(e2)
        host_views = []
        with torch.cuda.stream(self.d2h):
            for t, o, s in zip(tensors, offs, sizes):
                h = self.oring.view(rec, o, s).view(t.dtype).reshape(t.shape)
                if s:
                    h.copy_(t, non_blocking=True)
                t.record_stream(self.d2h)
                host_views.append(h)
            e3 = torch.cuda.Event()
            e3.record(self.d2h)
        raw_h = dict(zip(keys, host_views))
        amax_h = host_views[-1] if amax is not None else None
        return e3, raw_h, amax_h, rec
