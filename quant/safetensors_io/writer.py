"""Writing safetensors: :class:`AtomicWriter` writes a file whose tensor list is known up front: header
first, then each tensor streamed in order, into a temp file beside the target (quant.outputs), fsynced,
then renamed. An error or Ctrl-C removes the temp file; nothing ever appears under the final name
half-written. :func:`safetensors_order` reproduces the safetensors library's tensor order (and so real
files' bytes)."""
from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path

from ..dtypes import DTYPE_BYTES
from ..errors import QuantgateError
from .header import dtype_name


def tensor_bytes(t: torch.Tensor) -> memoryview:
    import torch
    t = t.detach().contiguous()
    if t.device.type != "cpu":
        t = t.cpu()
    return memoryview(t.reshape(-1).view(torch.uint8).numpy()).cast("B")


# safetensors' (Rust) Dtype enum order; its writer sorts tensors by dtype *descending*, then name
SAFETENSORS_DTYPE_ORDER = ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32",
                           "F32", "F64", "I64", "U64")


def safetensors_order(entries: list[tuple[str, str, tuple]]) -> list[tuple[str, str, tuple]]:
    """``entries`` in the order the safetensors library writes them (reproduces real files' bytes)."""
    return sorted(entries, key=lambda e: (-SAFETENSORS_DTYPE_ORDER.index(e[1]), e[0]))


def plan_layout(entries: list[tuple[str, str, tuple]], metadata: dict[str, str] | None):
    """Header JSON bytes (padded to 8, no length prefix) for tensors laid out consecutively in
    ``entries`` order, and ``[(name, dtype, shape, begin, end)]`` with data-section offsets."""
    hdr: dict = {}
    if metadata:
        hdr["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    off, placed = 0, []
    for name, dt, shape in entries:
        n = math.prod(shape) * DTYPE_BYTES[dt]
        hdr[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + n]}
        placed.append((name, dt, tuple(shape), off, off + n))
        off += n
    raw = json.dumps(hdr, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return raw, placed


def build_header(entries: list[tuple[str, str, tuple]], metadata: dict[str, str] | None) -> bytes:
    """Header bytes (length prefix included) for tensors laid out consecutively in ``entries`` order."""
    raw, _ = plan_layout(entries, metadata)
    return struct.pack("<Q", len(raw)) + raw


class AtomicWriter:
    """Stream tensors into ``path`` atomically. Use as a context manager; ``write`` each entry in
    order; the file appears under its final name only when the block exits without error."""

    def __init__(self, path, entries: list[tuple[str, str, tuple]], metadata: dict[str, str] | None = None,
                 *, writeback_every: int = 0):
        """``writeback_every`` > 0: start the disk write-back of each such many bytes as they are
        written (Linux sync_file_range), so the final fsync finds little left to do."""
        self.path = Path(path)
        self._wb_every = writeback_every
        self._wb_done = 0
        self.entries = list(entries)
        names = [e[0] for e in self.entries]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise QuantgateError(f"internal error: tensor {dup!r} planned twice", path)
        self._header = build_header(self.entries, metadata)
        self._i = 0
        self._f = None
        self.bytes_written = 0

    def __enter__(self):
        from ..outputs import atomic_file
        self._cm = atomic_file(self.path)
        self._f = self._cm.__enter__()
        try:
            self._io(self._f.write, self._header)
        except BaseException:
            self._cm.__exit__(*sys.exc_info())
            raise
        return self

    def _io(self, fn, *a):
        try:
            return fn(*a)
        except OSError as e:          # e.g. disk full: the temp file is removed on exit
            raise QuantgateError(f"writing the output failed: {e.strerror or e}", self.path) from None

    def write(self, name: str, t: torch.Tensor) -> None:
        if self._i >= len(self.entries):
            raise QuantgateError(f"internal error: unplanned tensor {name!r}", self.path)
        ename, edt, eshape = self.entries[self._i]
        if name != ename or dtype_name(t.dtype) != edt or tuple(t.shape) != tuple(eshape):
            raise QuantgateError(
                f"internal error: wrote {name} {dtype_name(t.dtype)}{list(t.shape)}, "
                f"planned {ename} {edt}{list(eshape)}", self.path)
        mv = tensor_bytes(t)
        self._io(self._f.write, mv)
        self.bytes_written += len(mv)
        self._i += 1
        if self._wb_every and self.bytes_written - self._wb_done >= self._wb_every:
            self._io(self._f.flush)
            end = len(self._header) + self.bytes_written
            _start_writeback(self._f.fileno(), self._wb_done, end - self._wb_done)
            self._wb_done = end

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self._i != len(self.entries):
            try:
                raise QuantgateError(f"internal error: {len(self.entries) - self._i} planned tensors "
                                     "were never written", self.path)
            except QuantgateError:
                self._cm.__exit__(*sys.exc_info())
                raise
        return self._cm.__exit__(exc_type, exc, tb)


_SFR = None


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing a file range to disk now (no wait); a no-op off Linux."""
    global _SFR
    if _SFR is None:
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            f = libc.sync_file_range
            f.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _SFR = f
        except (OSError, AttributeError):
            _SFR = False
    if _SFR:
        _SFR(fd, offset, nbytes, 2)       # SYNC_FILE_RANGE_WRITE


def save_file(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    """Write a whole dict atomically (tests and small files)."""
    entries = [(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in tensors.items()]
    with AtomicWriter(path, entries, metadata) as w:
        for k, v in tensors.items():
            w.write(k, v)
