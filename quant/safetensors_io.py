"""safetensors, read and written by quantgate's own code.

* :func:`read_header` trusts nothing in the file: it bounds the header length before reading it,
  checks JSON types, dtypes, shapes, offsets (in range, no overlap, no gap, size == dtype x shape)
  and the file length, and never allocates what a header claims.
* :class:`SafetensorsFile` reads one tensor at a time (``pread``), so peak memory is one tensor.
* :class:`AtomicWriter` writes a file whose tensor list is known up front: header first, then each
  tensor streamed in order, into a temp file beside the target, fsynced, then renamed. An error or
  Ctrl-C removes the temp file; nothing ever appears under the final name half-written.
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import InputError, QuantgateError
from .dtypes import DTYPE_BYTES

MAX_HEADER_BYTES = 100 * 1024 * 1024   # the safetensors library's own limit

TORCH_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
    "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
    "F64": torch.float64, "I64": torch.int64, "U64": torch.uint64,
}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def dtype_name(t: torch.dtype) -> str:
    try:
        return DTYPE_NAMES[t]
    except KeyError:
        raise QuantgateError(f"dtype {t} cannot be stored in safetensors") from None


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int      # absolute file offset
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Header:
    path: str
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    header_len: int
    file_size: int

    @property
    def data_bytes(self) -> int:
        return self.file_size - 8 - self.header_len


def _bad(path, msg):
    return InputError(msg, path)


def _no_duplicate_keys(pairs):
    d = dict(pairs)
    if len(d) != len(pairs):
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup[:60]!r}")
    return d


def parse_header_bytes(path, raw: bytes, file_size: int, header_len: int) -> Header:
    """Validate an already-read header (``raw`` = the JSON bytes)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(path, "safetensors header is not valid UTF-8") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as e:   # JSONDecodeError, int-digit limit, nesting
        why = getattr(e, "msg", None) or ("too deeply nested" if isinstance(e, RecursionError) else str(e)[:80])
        raise _bad(path, f"safetensors header is not valid JSON ({why})") from None
    if not isinstance(obj, dict):
        raise _bad(path, "safetensors header is not a JSON object")
    meta = obj.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise _bad(path, "__metadata__ must map strings to strings")
    data_start = 8 + header_len
    data_size = file_size - data_start
    tensors: dict[str, TensorInfo] = {}
    spans = []
    for name, e in obj.items():
        if not isinstance(e, dict):
            raise _bad(path, f"tensor {name!r}: entry is not an object")
        dt, shape, offs = e.get("dtype"), e.get("shape"), e.get("data_offsets")
        if not isinstance(dt, str) or dt not in DTYPE_BYTES:
            raise _bad(path, f"tensor {name!r}: unknown dtype {dt!r}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**48 for d in shape)):
            raise _bad(path, f"tensor {name!r}: invalid shape {str(shape)[:60]}")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise _bad(path, f"tensor {name!r}: invalid data_offsets {str(offs)[:60]}")
        b, en = offs
        if b < 0 or en < b:
            raise _bad(path, f"tensor {name!r}: invalid data offsets [{b}, {en}]")
        if en > data_size:
            raise _bad(path, f"tensor {name!r} extends past the end of the file "
                             f"(ends at {en}, data section is {data_size} bytes; truncated file?)")
        need = math.prod(shape) * DTYPE_BYTES[dt]
        if en - b != need:
            raise _bad(path, f"tensor {name!r}: {en - b} data bytes but {dt}{shape} needs {need}")
        tensors[name] = TensorInfo(name, dt, tuple(shape), data_start + b, data_start + en)
        spans.append((b, en, name))
    spans.sort()
    pos = 0
    for b, en, name in spans:
        if b < pos:
            raise _bad(path, f"tensor {name!r} overlaps another tensor's data (offset {b} < {pos})")
        if b > pos:
            raise _bad(path, f"gap of {b - pos} bytes before tensor {name!r}: data not fully covered")
        pos = en
    if pos != data_size:
        raise _bad(path, f"file has {data_size - pos} bytes after the last tensor (not a clean safetensors file)")
    return Header(str(path), tensors, dict(meta), header_len, file_size)


def read_header(path) -> Header:
    """Read and validate the header of a safetensors file without touching tensor data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"file is {size} bytes, too short to be safetensors")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > MAX_HEADER_BYTES:
                raise _bad(path, f"header length {hlen} is absurd (limit {MAX_HEADER_BYTES}); not a safetensors file?")
            if 8 + hlen > size:
                raise _bad(path, f"header length {hlen} exceeds the file size {size} (truncated file?)")
            raw = f.read(hlen)
    except IsADirectoryError:
        raise _bad(path, "is a directory, expected a .safetensors file") from None
    except FileNotFoundError:
        raise _bad(path, "no such file") from None
    except PermissionError:
        raise _bad(path, "permission denied") from None
    except OSError as e:
        raise _bad(path, f"cannot read: {e.strerror or e}") from None
    return parse_header_bytes(path, raw, size, hlen)


class SafetensorsFile:
    """Random access to the tensors of one validated file, one tensor in memory at a time."""

    def __init__(self, path):
        self.path = Path(path)
        self.header = read_header(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def keys(self):
        return list(self.header.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.header.tensors[name]

    def _read_into(self, name: str, mv: memoryview) -> None:
        ti = self.header.tensors[name]
        got = 0
        while got < ti.nbytes:
            n = os.preadv(self._fd, [mv[got:]], ti.begin + got)
            if n <= 0:
                raise InputError(f"tensor {name!r}: file ended while reading (truncated?)", self.path)
            got += n

    def raw(self, name: str) -> bytearray:
        buf = bytearray(self.header.tensors[name].nbytes)
        self._read_into(name, memoryview(buf))
        return buf

    def get(self, name: str) -> torch.Tensor:
        ti = self.header.tensors[name]
        dt = TORCH_DTYPES[ti.dtype]
        if ti.nbytes == 0:
            return torch.empty(ti.shape, dtype=dt)
        t = torch.empty(ti.nbytes, dtype=torch.uint8)      # no zero-fill: the read overwrites it all
        self._read_into(name, memoryview(t.numpy()).cast("B"))
        return t.view(dt).reshape(ti.shape)


def tensor_bytes(t: torch.Tensor) -> memoryview:
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

    def __init__(self, path, entries: list[tuple[str, str, tuple]], metadata: dict[str, str] | None = None):
        self.path = Path(path)
        self.entries = list(entries)
        names = [e[0] for e in self.entries]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise QuantgateError(f"internal error: tensor {dup!r} planned twice", path)
        self._header = build_header(self.entries, metadata)
        self._i = 0
        self._f = None
        self._tmp = None
        self.bytes_written = 0

    def __enter__(self):
        d = self.path.parent
        try:
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=d)
        except OSError as e:
            raise QuantgateError(f"cannot write the output here: {e.strerror or e}", self.path) from None
        self._tmp = Path(tmp)
        self._f = os.fdopen(fd, "wb", buffering=8 * 1024 * 1024)
        self._io(self._f.write, self._header)
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

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                if self._i != len(self.entries):
                    raise QuantgateError(f"internal error: {len(self.entries) - self._i} planned tensors "
                                         "were never written", self.path)
                self._io(self._f.flush)
                self._io(os.fsync, self._f.fileno())
                self._f.close()
                self._io(os.replace, self._tmp, self.path)
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                self._tmp = None
        finally:
            if self._tmp is not None:
                try:
                    self._f.close()
                except Exception:
                    pass
                self._tmp.unlink(missing_ok=True)
        return False


def save_file(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str] | None = None) -> None:
    """Write a whole dict atomically (tests and small files)."""
    entries = [(k, dtype_name(v.dtype), tuple(v.shape)) for k, v in tensors.items()]
    with AtomicWriter(path, entries, metadata) as w:
        for k, v in tensors.items():
            w.write(k, v)
