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
import re
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, QuantgateError, short
from .dtypes import DTYPE_BYTES

MAX_HEADER_BYTES = 100_000_000   # the safetensors library's own limit (MAX_HEADER_SIZE)

_LAZY: dict = {}


def _torch_dtypes() -> dict:
    """safetensors dtype name -> torch dtype (torch is imported on first use, not at import)."""
    if "TORCH_DTYPES" not in _LAZY:
        import torch
        _LAZY["TORCH_DTYPES"] = d = {
            "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "F8_E5M2": torch.float8_e5m2,
            "F8_E4M3": torch.float8_e4m3fn, "I16": torch.int16, "U16": torch.uint16, "F16": torch.float16,
            "BF16": torch.bfloat16, "I32": torch.int32, "U32": torch.uint32, "F32": torch.float32,
            "F64": torch.float64, "I64": torch.int64, "U64": torch.uint64,
        }
        _LAZY["DTYPE_NAMES"] = {v: k for k, v in d.items()}
    return _LAZY["TORCH_DTYPES"]


def __getattr__(name):          # TORCH_DTYPES / DTYPE_NAMES stay importable names
    if name in ("TORCH_DTYPES", "DTYPE_NAMES"):
        _torch_dtypes()
        return _LAZY[name]
    raise AttributeError(name)


def dtype_name(t: torch.dtype) -> str:
    try:
        _torch_dtypes()
        return _LAZY["DTYPE_NAMES"][t]
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


# --- the header parser: accepts exactly what the safetensors library (Rust, serde_json) accepts ----
# Every rule below mirrors one of safetensors' (checked by tests/test_safetensors_parity.py, a
# property test that feeds the same bytes to both): serde_json's grammar (no NaN/Infinity, no lone
# UTF-16 surrogates, numbers in f64 range, nesting depth <= 127), serde's typing (``__metadata__``
# absent/null or a map of strings, exactly one of each tensor field, usize shapes/offsets -- "-0" is a
# float there), duplicate tensor names: the last one wins, and Metadata::validate's offset walk.
SAFETENSORS_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
_U64 = 2**64 - 1
_MAX_DEPTH = 127                  # serde_json's recursion limit, as the whole document's nesting
_SURROGATE_ESC = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Obj(list):
    """A JSON object as its list of (key, value) pairs (duplicates kept; context decides)."""


class _Reject(ValueError):
    pass


def _parse_int(s: str):
    v = int(s)                       # > 4300 digits: ValueError (also out of f64 range for serde)
    if s == "-0" or v > _U64 or v < -2**63:
        return _parse_float(s)       # serde_json: "-0" and out-of-(i64|u64) integers are f64
    return v


def _parse_float(s: str):
    v = float(s)
    if math.isinf(v):
        raise _Reject("number out of range")
    return v


def _no_constant(name):
    raise _Reject(f"{name} is not JSON")


def _depth(v) -> int:
    d, stack = 0, [(v, 1)]
    while stack:
        x, lvl = stack.pop()
        if isinstance(x, list):
            d = max(d, lvl)
            if lvl > _MAX_DEPTH:
                break
            stack.extend((y[1] if isinstance(x, _Obj) else y, lvl + 1) for y in x)
    return d


def _has_lone_surrogate(v) -> bool:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if _SURROGATE.search(x):
                return True
        elif isinstance(x, _Obj):
            for k, y in x:
                if _SURROGATE.search(k):
                    return True
                stack.append(y)
        elif isinstance(x, list):
            stack.extend(x)
    return False


def _usize(v) -> bool:
    return type(v) is int and 0 <= v <= _U64


def _what(v) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", type(None): "null",
            _Obj: "an object", list: "an array"}.get(type(v), "a value")


def parse_header_bytes(path, raw: bytes, file_size: int, header_len: int) -> Header:
    """Validate an already-read header (``raw`` = the JSON bytes) exactly as the safetensors
    library does; then refuse dtypes quantgate does not handle."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(path, "safetensors header is not valid UTF-8") from None
    try:
        top = json.loads(text, object_pairs_hook=_Obj, parse_int=_parse_int, parse_float=_parse_float,
                         parse_constant=_no_constant)
    except _Reject as e:
        raise _bad(path, f"safetensors header is not valid JSON ({e})") from None
    except RecursionError:
        raise _bad(path, "safetensors header is not valid JSON (nested too deeply)") from None
    except ValueError as e:   # JSONDecodeError, the int-digit limit
        why = getattr(e, "msg", None) or "a number out of range"
        raise _bad(path, f"safetensors header is not valid JSON ({why})") from None
    if not isinstance(top, _Obj):
        raise _bad(path, f"safetensors header is {_what(top)}, not a JSON object")
    if _SURROGATE_ESC.search(text) and _has_lone_surrogate(top):
        raise _bad(path, "safetensors header holds a lone UTF-16 surrogate (\\uD800-\\uDFFF escape); "
                         "not valid for the safetensors library")
    meta_pairs, seen_meta, entries = None, False, []
    for k, v in top:
        if k == "__metadata__":
            if seen_meta:
                raise _bad(path, "safetensors header has two __metadata__ entries")
            seen_meta = True
            if v is None:
                continue
            if not isinstance(v, _Obj):
                raise _bad(path, f"__metadata__ is {_what(v)}; it must be an object mapping strings to strings")
            meta_pairs = v
        else:
            entries.append((k, v))      # every entry is validated; a repeated name: the last one wins
    metadata: dict[str, str] = {}
    for mk, mv in meta_pairs or ():
        if not isinstance(mv, str):
            raise _bad(path, f"__metadata__[{short(mk)}] is {_what(mv)}; __metadata__ must map strings to strings")
        metadata[mk] = mv
    data_start = 8 + header_len
    data_size = file_size - data_start
    last: dict = {}
    for name, e in entries:
        if not isinstance(e, _Obj):
            raise _bad(path, f"tensor {short(name)}: entry is {_what(e)}, not an object")
        fields: dict = {}
        for fk, fv in e:
            if fk in ("dtype", "shape", "data_offsets"):
                if fk in fields:
                    raise _bad(path, f"tensor {short(name)}: field {fk!r} given twice")
                fields[fk] = fv
            elif isinstance(fv, list) and 2 + _depth(fv) > _MAX_DEPTH:
                raise _bad(path, "safetensors header is not valid JSON (nested too deeply)")
        for fk in ("dtype", "shape", "data_offsets"):
            if fk not in fields:
                raise _bad(path, f"tensor {short(name)}: missing field {fk!r}")
        dt, shape, offs = fields["dtype"], fields["shape"], fields["data_offsets"]
        if not isinstance(dt, str) or dt not in SAFETENSORS_BITS:
            raise _bad(path, f"tensor {short(name)}: unknown dtype {short(dt) if isinstance(dt, str) else _what(dt)}")
        if type(shape) is not list or not all(_usize(d) for d in shape):
            raise _bad(path, f"tensor {short(name)}: invalid shape (not a list of non-negative integers)")
        if type(offs) is not list or len(offs) != 2 or not all(_usize(o) for o in offs):
            raise _bad(path, f"tensor {short(name)}: invalid data_offsets (not two non-negative integers)")
        last[name] = (offs[0], offs[1], name, dt, shape)
    spans = sorted(last.values(), key=lambda x: (x[0], x[1]))
    pos = 0
    tensors: dict[str, TensorInfo] = {}
    for b, en, name, dt, shape in spans:
        if b != pos or en < b:
            if b < pos:
                why = f"overlaps another tensor's data (offset {b} < {pos})"
            elif b > pos:
                why = f"leaves a gap of {b - pos} bytes before it: data not fully covered"
            else:
                why = f"has invalid data offsets [{b}, {en}]"
            raise _bad(path, f"tensor {short(name)} {why}")
        pos = en
        n = 1
        for d in shape:
            n *= d
            if n > _U64:
                raise _bad(path, f"tensor {short(name)}: shape {str(shape)[:80]} overflows (element count)")
        bits = n * SAFETENSORS_BITS[dt]
        if bits > _U64:
            raise _bad(path, f"tensor {short(name)}: shape {str(shape)[:80]} overflows (byte count)")
        if bits % 8:
            raise _bad(path, f"tensor {short(name)}: {dt}{str(shape)[:80]} is not a whole number of bytes")
        if en - b != bits // 8:
            raise _bad(path, f"tensor {short(name)}: {en - b} data bytes but {dt}{str(shape)[:80]} needs {bits // 8}")
        if en > data_size:
            raise _bad(path, f"tensor {short(name)} extends past the end of the file "
                             f"(ends at {en}, data section is {data_size} bytes; truncated file?)")
        tensors[name] = TensorInfo(name, dt, tuple(shape), data_start + b, data_start + en)
    if pos != data_size:
        raise _bad(path, f"file has {data_size - pos} bytes after the last tensor (not a clean safetensors file)")
    for t in tensors.values():      # valid for safetensors, but not something quantgate reads
        if t.dtype not in DTYPE_BYTES:
            raise _bad(path, f"tensor {short(t.name)}: dtype {t.dtype} is valid safetensors but not supported "
                             f"by quantgate (supported: {', '.join(DTYPE_BYTES)})")
    return Header(str(path), tensors, metadata, header_len, file_size)


def read_header(path) -> Header:
    """Read and validate the header of a safetensors file without touching tensor data. No byte
    of a file that is not safetensors is ever echoed in the error."""
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not path.is_dir():   # never open a FIFO (blocks)
            raise _bad(path, "not a regular file (a FIFO, device or socket)")
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _bad(path, "not a regular file")
            size = st.st_size
            head = f.read(8)
            if len(head) < 8:
                raise _bad(path, f"file is {size} bytes, too short to be safetensors")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > MAX_HEADER_BYTES:
                raise _bad(path, "not a safetensors file (its first 8 bytes are not a plausible header length)")
            if 8 + hlen > size:
                raise _bad(path, f"the header length in the first 8 bytes runs past the end of the file "
                                 f"({size} bytes; truncated, or not a safetensors file)")
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
        self.pread_into(ti.begin, mv[:ti.nbytes], name)

    def pread_into(self, begin: int, mv: memoryview, name: str | None = None) -> None:
        """Fill ``mv`` from file offset ``begin`` (os.preadv: no shared file position, any thread)."""
        got, total = 0, len(mv)
        while got < total:
            n = os.preadv(self._fd, [mv[got:]], begin + got)
            if n <= 0:
                what = f"tensor {short(name)}: " if name else ""
                raise InputError(f"{what}file ended while reading (truncated?)", self.path)
            got += n

    def raw(self, name: str) -> bytearray:
        buf = bytearray(self.header.tensors[name].nbytes)
        self._read_into(name, memoryview(buf))
        return buf

    def get(self, name: str) -> torch.Tensor:
        ti = self.header.tensors[name]
        import torch
        dt = _torch_dtypes()[ti.dtype]
        if ti.nbytes == 0:
            return torch.empty(ti.shape, dtype=dt)
        t = torch.empty(ti.nbytes, dtype=torch.uint8)      # no zero-fill: the read overwrites it all
        self._read_into(name, memoryview(t.numpy()).cast("B"))
        return t.view(dt).reshape(ti.shape)


def decode_floats(dtype: str, raw: bytes) -> list[float] | None:
    """Little-endian F32/F64/F16/BF16 bytes as Python floats without torch; None for other dtypes."""
    if dtype == "F32":
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if dtype == "F64":
        return list(struct.unpack(f"<{len(raw) // 8}d", raw))
    if dtype == "F16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    if dtype == "BF16":
        hs = struct.unpack(f"<{len(raw) // 2}H", raw)
        return list(struct.unpack(f"<{len(hs)}f", struct.pack(f"<{len(hs)}I", *(h << 16 for h in hs))))
    return None


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
        from .outputs import atomic_file
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
