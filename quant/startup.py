"""Start-up of ``convert --device cuda`` overlapped with the first reads.

Serially, a CUDA conversion spends its first seconds importing torch, creating the CUDA context, loading
cuBLAS and Triton's compiled kernels -- with the disk idle -- before it reads its first tensor (measured on an
H100, one run: the whole CLI 1.51-1.80x the I/O floor against 1.09-1.33x for the conversion alone). :func:`begin`,
called by the CLI before it parses its arguments, starts two daemon threads instead:

* ``qg-prefetch`` reads the source's tensors into the page cache, at most ``lead`` bytes ahead of the pipeline's
  reader (:meth:`Warmup.consumed`), so host memory stays bounded (``lead`` = min(16 GiB, a quarter of the available
  memory)): first the first file from its first byte (the source itself, or the first ``*.safetensors`` of its
  directory by name: a regular file, never a symlink) while ``qg-open`` parses the headers with the project's own
  validated reader (the same checks as the conversion; anything it refuses is left to the conversion to report),
  then every tensor in the order the pipeline reads them.
* ``qg-gpu-warm`` imports torch, creates the CUDA context and runs the kernels of the target format (and of the
  formats its plan may give sensitive layers) once on zero tensors of the source's own dtype and 2-D shapes, so
  Triton's JIT (or its disk cache) and cuBLAS are loaded before the first layer; the pipeline waits for it
  (:meth:`Warmup.wait_gpu`) before its own first launch.

``QUANTGATE_PRELOAD_LIBS=1`` (opt-in, not measured on a GPU yet): the prefetcher first reads, in file order, the byte
ranges of the shared libraries that the previous CUDA conversion had in the page cache (recorded at its end with
mincore into ``~/.cache/quantgate/startup-libs.json``) and the Python files of the modules it imported, so torch's cold
import reads them at once instead of page fault by page fault and file by file while the shards stream in.

Neither thread writes anything or decides anything: errors there are dropped (the conversion meets and reports
them itself), and nothing but the page cache and the CUDA context is shared. ``QUANTGATE_WARMUP=0`` turns it off
(the serial start-up, for measurements); ``QUANTGATE_TIMELINE=FILE`` writes the start-up timeline as JSON
(seconds since the process started) when the command ends.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

_CURRENT: "Warmup | None" = None
_T: dict[str, float] = {}
READ_BLOCK = 64 << 20
MIN_BLOCK = 1 << 20
MAX_LEAD = 16 << 30
MAX_WARM_SHAPES = 12


def _process_start() -> float:
    """Wall-clock time the process started (Linux: /proc), else now."""
    try:
        with open("/proc/self/stat", "rb") as f:
            ticks = int(f.read().rsplit(b")", 1)[1].split()[19])
        with open("/proc/uptime", "rb") as f:
            up = float(f.read().split()[0])
        return time.time() - up + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


def mark(name: str) -> None:
    """Record a point of the start-up timeline (kept only with QUANTGATE_TIMELINE)."""
    if os.environ.get("QUANTGATE_TIMELINE"):
        _T.setdefault(name, time.time())


def write_timeline() -> None:
    """QUANTGATE_TIMELINE=FILE: the timeline, seconds since the process started, as JSON (a measurement aid)."""
    path = os.environ.get("QUANTGATE_TIMELINE")
    if not path or not _T:
        return
    t0 = _process_start()
    w = _CURRENT
    data = {"points_s": {k: round(v - t0, 3) for k, v in sorted(_T.items(), key=lambda kv: kv[1])},
            "warmup": w.report() if w is not None else None}
    from .outputs import write_text
    write_text(path, json.dumps(data, indent=1) + "\n", what="timeline")


def _available_memory() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 4 << 30


def enabled() -> bool:
    return os.environ.get("QUANTGATE_WARMUP", "1") != "0"


# ---- shared libraries: record what a CUDA conversion had resident, read it first next time (opt-in) ------------
PRELOAD_ENV = "QUANTGATE_PRELOAD_LIBS"


def preload_enabled() -> bool:
    return os.environ.get(PRELOAD_ENV, "0") == "1"


def libs_record_path() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "quantgate",
                        "startup-libs.json")


def _is_lib(path: str) -> bool:
    base = os.path.basename(path)
    return (base.endswith(".so") or ".so." in base) and os.path.isfile(path) and not os.path.islink(path)


def resident_ranges(path: str, gap: int = 1 << 20) -> list[list[int]]:
    """Byte ranges of ``path`` in the page cache now (mincore over a fresh read-only mapping), ranges closer
    than ``gap`` merged."""
    import ctypes
    import mmap
    import re
    size = os.path.getsize(path)
    if size == 0:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return []
        try:
            vec = ctypes.create_string_buffer((size + page - 1) // page)
            if libc.mincore(addr, size, vec) != 0:
                return []
            bits = vec.raw.translate(bytes(i & 1 for i in range(256)))
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    out: list[list[int]] = []
    for m in re.finditer(b"\x01+", bits):
        b, e = m.start() * page, min(size, m.end() * page)
        if out and b - out[-1][1] < gap:
            out[-1][1] = e
        else:
            out.append([b, e])
    return out


def _is_module_file(path: str) -> bool:
    return path.endswith((".py", ".pyc")) and os.path.isfile(path) and not os.path.islink(path)


def _module_files() -> list[str]:
    """The Python files (.pyc, or .py where none is cached) of every module this process imported, sorted by
    path (a package's files lie together on disk)."""
    out = set()
    for m in list(sys.modules.values()):
        spec = getattr(m, "__spec__", None)
        for f in (getattr(spec, "cached", None), getattr(m, "__file__", None)):
            if isinstance(f, str) and _is_module_file(f):
                out.add(f)
                break
    return sorted(out)


def record_libs() -> int:
    """Write the resident ranges of every shared library this process maps (the CUDA conversion's torch, CUDA
    and Triton libraries), and the Python files of every module it imported, to :func:`libs_record_path`;
    returns the bytes recorded. (A cold ``import torch`` reads ~2,000 small .pyc files besides the libraries.
    Measured on the 2-core CPU VM under a concurrent 6 GiB sequential read, median of 3: the import finished at
    6.92 s with no preload, 5.77 s reading the libraries first, 3.99 s reading the libraries and the module files
    first; 3.40 s with no concurrent read -- benchmarks/results/cpu-cold-import-preload-2026-12-07.json.)"""
    seen: dict[str, None] = {}
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/") and _is_lib(parts[5].strip()):
                seen.setdefault(parts[5].strip(), None)
    libs = []
    for path in seen:
        st = os.stat(path)
        ranges = resident_ranges(path)
        if ranges:
            libs.append({"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ranges": ranges})
    modules = []
    for path in _module_files():
        st = os.stat(path)
        if 0 < st.st_size <= MODULE_FILE_MAX:
            modules.append({"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    from .outputs import write_text
    target = libs_record_path()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    write_text(target, json.dumps({"libs": libs, "modules": modules}) + "\n", what="startup library record")
    return sum(e - b for lib in libs for b, e in lib["ranges"]) + sum(m["size"] for m in modules)


MODULE_FILE_MAX = 64 << 20


def recorded_lib_ranges() -> list[tuple[str, int, int]]:
    """The recorded ranges of libraries unchanged since (same size and mtime), in file order, then the recorded
    module files unchanged since (whole files); [] when none."""
    path = libs_record_path()
    if not os.path.isfile(path):
        return []
    from .inputs import load_json
    try:
        data = load_json(path, what="startup library record")
    except Exception:         # noqa: BLE001 - a bad record only costs the preload
        return []
    out = []
    for lib in data.get("libs", []) if isinstance(data, dict) else []:
        try:
            p, size, mtime, ranges = lib["path"], lib["size"], lib["mtime_ns"], lib["ranges"]
            st = os.stat(p)
            if not (isinstance(p, str) and _is_lib(p) and st.st_size == size and st.st_mtime_ns == mtime):
                continue
            out += [(p, int(b), min(int(e), size)) for b, e in ranges if 0 <= int(b) < int(e)]
        except (KeyError, TypeError, ValueError, OSError):
            continue
    for mod in data.get("modules", []) if isinstance(data, dict) else []:
        try:
            p, size, mtime = mod["path"], int(mod["size"]), int(mod["mtime_ns"])
            st = os.stat(p)
            if isinstance(p, str) and _is_module_file(p) and st.st_size == size and st.st_mtime_ns == mtime \
                    and 0 < size <= MODULE_FILE_MAX:
                out.append((p, 0, size))
        except (KeyError, TypeError, ValueError, OSError):
            continue
    return out


class Warmup:
    """The two start-up threads of one conversion (see the module's docstring)."""

    def __init__(self, source, device: str, target: str, lead: int | None = None):
        self.source, self.device, self.target = str(source), str(device), target
        self.lead = lead if lead is not None else min(MAX_LEAD, _available_memory() // 4)
        self._spans: list[tuple[str, int, int]] = []          # (file, begin, end) in the pipeline's read order
        self._dtype_shapes: list[tuple[str, tuple]] = []      # (safetensors dtype, 2-D shape), first seen first
        self._opened = threading.Event()
        self._cond = threading.Condition()
        self._consumed = 0
        self._ahead = 0
        self._stop = False
        self.prefetched = 0
        self.preloaded = 0
        self.warmed: list[str] = []
        self.errors: list[str] = []
        self._gpu = threading.Thread(target=self._gpu_main, name="qg-gpu-warm", daemon=True)
        self._read = threading.Thread(target=self._read_main, name="qg-prefetch", daemon=True)

    def start(self) -> "Warmup":
        self._read.start()
        self._gpu.start()
        return self

    # ---- the pipeline's side ---------------------------------------------------------------------------
    def consumed(self, nbytes: int) -> None:
        """The pipeline's reader has read ``nbytes`` more (in the same order): the prefetcher may go on."""
        with self._cond:
            self._consumed += nbytes
            self._cond.notify_all()

    def wait_gpu(self, timeout: float | None = 300.0) -> None:
        """Block until the GPU warm-up has finished (the pipeline's first launch comes after it)."""
        if self._gpu.is_alive() and self._gpu is not threading.current_thread():
            self._gpu.join(timeout)
        mark("gpu_warm_joined")

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def report(self) -> dict:
        return {"prefetched_bytes": self.prefetched, "preloaded_lib_bytes": self.preloaded, "lead_bytes": self.lead,
                "warmed": self.warmed,
                "errors": self.errors[:5]}

    # ---- prefetch -------------------------------------------------------------------------------------
    def _open(self) -> None:
        """The source's tensor spans in plan (= source key) order, and its 2-D float shapes for the warm-up."""
        from .sources import open_source
        try:
            with open_source(self.source) as src:
                if not (hasattr(src, "span") and hasattr(src, "pread_into")):
                    return                                   # GGUF: the serial loop reads it
                for name in src.keys():
                    f, b, e = src.span(name)
                    self._spans.append((f, b, e))
                    info = src.info(name)
                    shape = tuple(info.shape)
                    if len(shape) == 2 and info.dtype in ("F32", "BF16", "F16") \
                            and (info.dtype, shape) not in self._dtype_shapes:
                        self._dtype_shapes.append((info.dtype, shape))
        except Exception as e:        # noqa: BLE001 - the conversion opens it again and reports the problem
            self.errors.append(f"open: {type(e).__name__}: {e}"[:300])
        finally:
            mark("warm_source_opened")
            self._opened.set()

    def _runs(self):
        """Adjacent spans of one file merged into reads of at most READ_BLOCK bytes (and at most the lead), in
        order: (file, begin, end)."""
        block = max(MIN_BLOCK, min(READ_BLOCK, self.lead))
        cur = None
        for f, b, e in self._spans:
            if cur is not None and cur[0] == f and cur[2] == b and e - cur[1] <= block:
                cur[2] = e
                continue
            if cur is not None:
                yield tuple(cur)
            cur = [f, b, e]
            while cur[2] - cur[1] > block:                     # a big tensor: in pieces
                yield cur[0], cur[1], cur[1] + block
                cur[1] += block
        if cur is not None:
            yield tuple(cur)

    def first_file(self) -> str | None:
        """The file a conversion of this source reads first, guessed without parsing anything: the source itself,
        else the first ``*.safetensors`` (by name, a regular file, not a symlink) of its directory."""
        p = self.source
        try:
            if os.path.isfile(p) and not os.path.islink(p) and p.endswith(".safetensors"):
                return p
            d = p if os.path.isdir(p) else os.path.dirname(p) if p.endswith(".json") else None
            if d is None:
                return None
            names = sorted(n for n in os.listdir(d) if n.endswith(".safetensors"))
            return next((os.path.join(d, n) for n in names if os.path.isfile(os.path.join(d, n))
                         and not os.path.islink(os.path.join(d, n))), None)
        except OSError:
            return None

    def _wait_lead(self, n: int, until: threading.Event | None = None) -> bool:
        """Wait until ``n`` more bytes stay within the lead over the pipeline's reader (or ``until`` is set);
        False: stopped."""
        with self._cond:
            while not self._stop and self._ahead > self._consumed and self._ahead + n - self._consumed > self.lead \
                    and not (until is not None and until.is_set()):
                self._cond.wait(0.05)
            return not self._stop

    def _read_main(self) -> None:
        opener = threading.Thread(target=self._open, name="qg-open", daemon=True)
        opener.start()
        fds: dict[str, int] = {}
        mv = memoryview(bytearray(READ_BLOCK))
        try:
            if preload_enabled():
                for f, b, e in recorded_lib_ranges():       # the libraries' pages, sequentially, before any shard
                    if self._stop:
                        return
                    if f not in fds:
                        fds[f] = os.open(f, os.O_RDONLY)
                    while b < e:
                        got = os.preadv(fds[f], [mv[:min(READ_BLOCK, e - b)]], b)
                        if got <= 0:
                            break
                        b += got
                        self.preloaded += got
                mark("libs_preloaded")
            # head start: the first file from its first byte while its header is parsed (imports of the reader
            # included); the span phase then skips what this read
            head, upto = self.first_file(), 0
            block = max(MIN_BLOCK, min(READ_BLOCK, self.lead))
            mark("prefetch_start")
            while head is not None and not self._opened.is_set():
                if not self._wait_lead(block, until=self._opened):
                    return
                if self._opened.is_set():
                    break
                if head not in fds:
                    fds[head] = os.open(head, os.O_RDONLY)
                got = os.preadv(fds[head], [mv[:block]], upto)
                if got <= 0:
                    break
                upto += got
                self.prefetched += got
                with self._cond:
                    self._ahead += got
            opener.join()
            mark("prefetch_spans")
            with self._cond:
                self._ahead = 0                     # from here on: span bytes, as the pipeline counts them
            for f, b, e in self._runs():
                n = e - b
                if not self._wait_lead(n):
                    return
                if f == head and b < upto:          # read in the head start (in the page cache)
                    b = min(e, upto)
                if e > b:
                    if f not in fds:
                        fds[f] = os.open(f, os.O_RDONLY)
                    self.prefetched += os.preadv(fds[f], [mv[:e - b]], b)
                with self._cond:
                    self._ahead += n
            mark("prefetch_done")
        except Exception as e:        # noqa: BLE001 - only the page cache was at stake
            self.errors.append(f"prefetch: {type(e).__name__}: {e}"[:300])
        finally:
            for fd in fds.values():
                os.close(fd)

    # ---- GPU ------------------------------------------------------------------------------------------
    def _formats(self):
        from . import formats
        fmt = formats.get(self.target)
        out = [fmt]
        for action in (*getattr(fmt, "sensitive_actions", {}).values(), getattr(fmt, "fallback_action", None)):
            if action:
                try:
                    lf = fmt.for_action(action)
                except Exception:     # noqa: BLE001
                    continue
                if lf not in out:
                    out.append(lf)
        return out

    def _gpu_main(self) -> None:
        try:
            import torch
            mark("torch_imported")
            if not torch.cuda.is_available():
                return
            dev = torch.device(self.device)
            if dev.index is None:
                dev = torch.device("cuda", torch.cuda.current_device())
            torch.empty(1, device=dev)
            torch.cuda.synchronize(dev)
            mark("cuda_ready")
            from .kernels import get_backend
            from .safetensors_io import TORCH_DTYPES
            be = get_backend(str(dev))
            fmts = self._formats()
            self._opened.wait(60)
            shapes = self._dtype_shapes[:MAX_WARM_SHAPES] or [("BF16", (64, 256))]
            stream = torch.cuda.Stream(dev)
            with torch.cuda.device(dev), torch.cuda.stream(stream):
                for dt, shape in shapes:
                    x = torch.zeros(shape, dtype=TORCH_DTYPES[dt], device=dev)
                    for lf in fmts:
                        if lf.refuses(*shape) if hasattr(lf, "refuses") else False:
                            continue
                        try:
                            fast = lf.quantize_async(be, x)
                            if fast is None:       # no async kernels: its torch ops (cuBLAS for the rotation)
                                lf.quantize(x[:64, :] if shape[0] > 64 else x, backend=be)
                            self.warmed.append(f"{lf.name} {dt}{list(shape)}")
                        except Exception as e:    # noqa: BLE001 - the conversion meets it again
                            self.errors.append(f"warm {lf.name} {dt}{list(shape)}: {type(e).__name__}: {e}"[:300])
                    del x
            stream.synchronize()
            mark("kernels_warm")
        except Exception as e:        # noqa: BLE001
            self.errors.append(f"gpu: {type(e).__name__}: {e}"[:300])


def begin(source, device: str, target: str) -> Warmup | None:
    """Start the warm-up of a CUDA conversion of ``source`` to ``target`` (None: off, or not a CUDA device)."""
    global _CURRENT
    if not enabled() or not str(device).startswith("cuda"):
        return None
    _CURRENT = Warmup(source, device, target).start()
    mark("warmup_started")
    return _CURRENT


def current() -> Warmup | None:
    return _CURRENT


def end() -> None:
    """Stop the prefetcher (the conversion has ended, or failed)."""
    w = _CURRENT
    if w is not None:
        w.stop()
