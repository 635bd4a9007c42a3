"""The safetensors header: dtype names, and a parser that accepts exactly what the safetensors library
(Rust, serde_json) accepts.

:func:`read_header` trusts nothing in the file: it bounds the header length before reading it, checks
JSON types, dtypes, shapes, offsets (in range, no overlap, no gap, size == dtype x shape) and the file
length, and never allocates what a header claims.

Every rule below mirrors one of safetensors' (checked by tests/quant/safetensors_io/test_safetensors_parity.py, a
property test that feeds the same bytes to both): serde_json's grammar (no NaN/Infinity, no lone
UTF-16 surrogates, numbers in f64 range, nesting depth <= 127; :mod:`.json_bounded`), serde's typing
(``__metadata__`` absent/null or a map of strings, exactly one of each tensor field, usize
shapes/offsets -- "-0" is a float there), duplicate tensor names: the last one wins, and
Metadata::validate's offset walk.
"""
from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..dtypes import DTYPE_BYTES
from ..errors import InputError, QuantgateError, short
from .json_bounded import MAX_DEPTH, SURROGATE_ESC, U64, Obj, Reject, depth, has_lone_surrogate, loads, \
    usize, what

MAX_HEADER_BYTES = 100_000_000   # the safetensors library's own limit (MAX_HEADER_SIZE)

SAFETENSORS_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}
_FIELDS = ("dtype", "shape", "data_offsets")

_LAZY: dict = {}


def torch_dtypes() -> dict:
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


def dtype_names() -> dict:
    """torch dtype -> safetensors dtype name."""
    torch_dtypes()
    return _LAZY["DTYPE_NAMES"]


def dtype_name(t: torch.dtype) -> str:
    try:
        return dtype_names()[t]
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


def parse_header_bytes(path, raw: bytes, file_size: int, header_len: int) -> Header:
    """Validate an already-read header (``raw`` = the JSON bytes) exactly as the safetensors
    library does; then refuse dtypes quantgate does not handle."""
    top = _json_top(path, raw)
    metadata, entries = _metadata_and_entries(path, top)
    last: dict = {}
    for name, e in entries:         # every entry is validated; a repeated name: the last one wins
        last[name] = _entry(path, name, e)
    data_start = 8 + header_len
    tensors = _placed(path, last.values(), data_start, file_size - data_start)
    for t in tensors.values():      # valid for safetensors, but not something quantgate reads
        if t.dtype not in DTYPE_BYTES:
            raise _bad(path, f"tensor {short(t.name)}: dtype {t.dtype} is valid safetensors but not supported "
                             f"by quantgate (supported: {', '.join(DTYPE_BYTES)})")
    return Header(str(path), tensors, metadata, header_len, file_size)


def _json_top(path, raw: bytes) -> Obj:
    """The header's JSON object (serde_json's grammar)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(path, "safetensors header is not valid UTF-8") from None
    try:
        top = loads(text)
    except Reject as e:
        raise _bad(path, f"safetensors header is not valid JSON ({e})") from None
    except RecursionError:
        raise _bad(path, "safetensors header is not valid JSON (nested too deeply)") from None
    except ValueError as e:   # JSONDecodeError, the int-digit limit
        why = getattr(e, "msg", None) or "a number out of range"
        raise _bad(path, f"safetensors header is not valid JSON ({why})") from None
    if not isinstance(top, Obj):
        raise _bad(path, f"safetensors header is {what(top)}, not a JSON object")
    if SURROGATE_ESC.search(text) and has_lone_surrogate(top):
        raise _bad(path, "safetensors header holds a lone UTF-16 surrogate (\\uD800-\\uDFFF escape); "
                         "not valid for the safetensors library")
    return top


def _metadata_and_entries(path, top: Obj) -> tuple[dict[str, str], list]:
    """``__metadata__`` (checked: a map of strings) and the tensor entries, in file order."""
    meta_pairs, seen_meta, entries = None, False, []
    for k, v in top:
        if k == "__metadata__":
            if seen_meta:
                raise _bad(path, "safetensors header has two __metadata__ entries")
            seen_meta = True
            if v is None:
                continue
            if not isinstance(v, Obj):
                raise _bad(path, f"__metadata__ is {what(v)}; it must be an object mapping strings to strings")
            meta_pairs = v
        else:
            entries.append((k, v))
    metadata: dict[str, str] = {}
    for mk, mv in meta_pairs or ():
        if not isinstance(mv, str):
            raise _bad(path, f"__metadata__[{short(mk)}] is {what(mv)}; __metadata__ must map strings to strings")
        metadata[mk] = mv
    return metadata, entries


def _entry(path, name: str, e) -> tuple:
    """One tensor entry's typed fields -> (begin, end, name, dtype, shape)."""
    if not isinstance(e, Obj):
        raise _bad(path, f"tensor {short(name)}: entry is {what(e)}, not an object")
    fields: dict = {}
    for fk, fv in e:
        if fk in _FIELDS:
            if fk in fields:
                raise _bad(path, f"tensor {short(name)}: field {fk!r} given twice")
            fields[fk] = fv
        elif isinstance(fv, list) and 2 + depth(fv) > MAX_DEPTH:
            raise _bad(path, "safetensors header is not valid JSON (nested too deeply)")
    for fk in _FIELDS:
        if fk not in fields:
            raise _bad(path, f"tensor {short(name)}: missing field {fk!r}")
    dt, shape, offs = fields["dtype"], fields["shape"], fields["data_offsets"]
    if not isinstance(dt, str) or dt not in SAFETENSORS_BITS:
        raise _bad(path, f"tensor {short(name)}: unknown dtype {short(dt) if isinstance(dt, str) else what(dt)}")
    if type(shape) is not list or not all(usize(d) for d in shape):
        raise _bad(path, f"tensor {short(name)}: invalid shape (not a list of non-negative integers)")
    if type(offs) is not list or len(offs) != 2 or not all(usize(o) for o in offs):
        raise _bad(path, f"tensor {short(name)}: invalid data_offsets (not two non-negative integers)")
    return offs[0], offs[1], name, dt, shape


def _placed(path, spans, data_start: int, data_size: int) -> dict[str, TensorInfo]:
    """Metadata::validate's offset walk: the tensors, sorted by offset, cover the data section exactly
    (no overlap, no gap, nothing after), each with as many bytes as dtype x shape."""
    pos = 0
    tensors: dict[str, TensorInfo] = {}
    for b, en, name, dt, shape in sorted(spans, key=lambda x: (x[0], x[1])):
        if b != pos or en < b:
            if b < pos:
                why = f"overlaps another tensor's data (offset {b} < {pos})"
            elif b > pos:
                why = f"leaves a gap of {b - pos} bytes before it: data not fully covered"
            else:
                why = f"has invalid data offsets [{b}, {en}]"
            raise _bad(path, f"tensor {short(name)} {why}")
        pos = en
        _check_size(path, name, dt, shape, en - b)
        if en > data_size:
            raise _bad(path, f"tensor {short(name)} extends past the end of the file "
                             f"(ends at {en}, data section is {data_size} bytes; truncated file?)")
        tensors[name] = TensorInfo(name, dt, tuple(shape), data_start + b, data_start + en)
    if pos != data_size:
        raise _bad(path, f"file has {data_size - pos} bytes after the last tensor (not a clean safetensors file)")
    return tensors


def _check_size(path, name: str, dt: str, shape: list, nbytes: int) -> None:
    n = 1
    for d in shape:
        n *= d
        if n > U64:
            raise _bad(path, f"tensor {short(name)}: shape {str(shape)[:80]} overflows (element count)")
    bits = n * SAFETENSORS_BITS[dt]
    if bits > U64:
        raise _bad(path, f"tensor {short(name)}: shape {str(shape)[:80]} overflows (byte count)")
    if bits % 8:
        raise _bad(path, f"tensor {short(name)}: {dt}{str(shape)[:80]} is not a whole number of bytes")
    if nbytes != bits // 8:
        raise _bad(path, f"tensor {short(name)}: {nbytes} data bytes but {dt}{str(shape)[:80]} needs {bits // 8}")


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
