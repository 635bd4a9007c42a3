"""A GGUF pre-scan that bounds every count and length by the file's size *before* gguf-py reads it.

gguf-py's ``GGUFReader`` trusts the file: an array declared with 2**32 or 2**60 elements makes it
loop (and allocate) per element, a string length past the end is silently cut, a tensor past the
end or with a wrapped element count fails deep inside numpy. :func:`prescan` walks the same header
layout with ``struct`` over a read-only mmap and refuses, with one line naming the file, anything
that does not fit: truncated fields, counts larger than the bytes left could hold, nested arrays,
non-UTF-8 names, unknown value or tensor types, zero or huge dimensions, tensor data outside the
file. Only then is the file handed to gguf-py. :func:`check_tensor` then refuses tensors gguf-py
cannot dequantize, and :func:`orig_shape` validates ComfyUI-GGUF's ``comfy.gguf.orig_shape``.
"""
from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass

from quant.errors import InputError, short

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_DIMS = 8                        # GGML_MAX_DIMS is 4; gguf-py writes 5-D conv weights
DEFAULT_ALIGNMENT = 32
# GGUFValueType -> struct code of a scalar (8 = STRING, 9 = ARRAY)
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_INT_TYPES = {0, 1, 2, 3, 4, 5, 10, 11}
# types whose data quantgate reads: raw floats and every type gguf-py's quants.dequantize knows
RAW_FLOAT_TYPES = ("F32", "F16", "BF16")


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dims: tuple[int, ...]       # ggml order (fastest first)
    type_id: int
    offset: int                 # relative to the data section


@dataclass
class Scan:
    version: int
    fields: dict                # key -> (value type, value or None for arrays/strings kept small)
    tensors: list[TensorEntry]
    data_offset: int
    file_size: int


class _Reader:
    def __init__(self, path, buf, order: str):
        self.path, self.buf, self.o, self.pos = path, buf, order, 0
        self.size = len(buf)

    def fail(self, msg):
        raise InputError(f"not a readable GGUF file ({msg})", self.path)

    def need(self, n: int, what: str):
        if n < 0 or self.pos + n > self.size:
            self.fail(f"{what} runs past the end of the file at byte {self.pos}")

    def unpack(self, code: str, what: str):
        n = struct.calcsize(code)
        self.need(n, what)
        v = struct.unpack_from(self.o + code, self.buf, self.pos)[0]
        self.pos += n
        return v

    def string(self, what: str, decode: bool = True):
        n = self.unpack("Q", f"{what} length")
        if n > self.size - self.pos:
            self.fail(f"{what} declares {n:,} bytes, more than the {self.size - self.pos:,} left in the file")
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        if not decode:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.fail(f"{what} is not UTF-8")

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY:
            if depth:
                self.fail(f"{what}: nested arrays are not supported")
            itype = self.unpack("I", f"{what} item type")
            count = self.unpack("Q", f"{what} length")
            left = self.size - self.pos
            if itype in _SCALAR:
                isz = struct.calcsize(_SCALAR[itype])
                if count * isz > left:
                    self.fail(f"{what} declares {count:,} items of {isz} bytes, more than the {left:,} bytes left")
                items = None
                if itype in _INT_TYPES and count <= 16:
                    items = list(struct.unpack_from(self.o + _SCALAR[itype] * count, self.buf, self.pos))
                self.pos += count * isz
                return ("array", itype, count, items)
            if itype == _STRING:
                if count * 8 > left:
                    self.fail(f"{what} declares {count:,} strings, more than the {left:,} bytes left could hold")
                for _ in range(count):
                    self.string(f"{what} item", decode=False)
                return ("array", itype, count, None)
            if itype == _ARRAY:
                self.fail(f"{what}: nested arrays are not supported")
            self.fail(f"{what}: unknown array item type {itype}")
        self.fail(f"{what}: unknown value type {vtype}")


def prescan(path) -> Scan:
    """Validate the whole GGUF header and tensor table against the file size (see module doc)."""
    buf, size = _map(path)
    try:
        v, order = _version(path, buf)
        r = _Reader(path, buf, order)
        r.pos = 8
        n_tensors = r.unpack("Q", "tensor count")
        n_kv = r.unpack("Q", "key/value count")
        left = size - r.pos
        if n_kv * 12 > left:          # key length (8) + value type (4) at least
            r.fail(f"{n_kv:,} key/value pairs declared, more than the {left:,} bytes left could hold")
        if n_tensors * 24 > left:     # name length 8 + n_dims 4 + type 4 + offset 8
            r.fail(f"{n_tensors:,} tensors declared, more than the {left:,} bytes left could hold")
        fields = _fields(r, n_kv)
        tensors = _tensor_table(r, n_tensors)
        align = DEFAULT_ALIGNMENT
        if "general.alignment" in fields:
            vt, a = fields["general.alignment"]
            if vt != 4 or a == 0 or a & (a - 1):
                r.fail("general.alignment is not a non-zero power of two (uint32)")
            align = a
        data = r.pos + (-r.pos % align)
        for t in tensors:
            _check_tensor(r, t, data, size)
        return Scan(v, fields, tensors, data, size)
    finally:
        buf.close()


def _map(path) -> tuple[mmap.mmap, int]:
    """The file mapped read-only, and its size (at least the 24 bytes of a GGUF preamble)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None
    try:
        size = os.fstat(fd).st_size
        if size < 24:
            raise InputError(f"not a readable GGUF file (only {size} bytes)", path)
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ), size
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read: {getattr(e, 'strerror', None) or e}", path) from None
    finally:
        os.close(fd)


def _version(path, buf) -> tuple[int, str]:
    """The GGUF version and byte order (a big-endian file reads its version byte-swapped)."""
    if buf[:4] != GGUF_MAGIC:
        raise InputError("not a GGUF file (no GGUF magic)", path)
    (v,) = struct.unpack_from("<I", buf, 4)
    order = "<"
    if v & 0xFFFF == 0:
        order = ">"
        (v,) = struct.unpack_from(">I", buf, 4)
    if v not in SUPPORTED_VERSIONS:
        raise InputError(f"GGUF version {v} is not supported (2 or 3)", path)
    return v, order


def _fields(r: _Reader, n_kv: int) -> dict:
    fields = {}
    for i in range(n_kv):
        key = r.string(f"key #{i}")
        if key in fields:
            r.fail(f"key {short(key)} appears twice")
        vtype = r.unpack("I", f"type of {short(key)}")
        fields[key] = (vtype, r.value(vtype, f"value of {short(key)}"))
    return fields


def _tensor_table(r: _Reader, n_tensors: int) -> list[TensorEntry]:
    tensors, names = [], set()
    for i in range(n_tensors):
        name = r.string(f"tensor #{i} name")
        if name in names:
            r.fail(f"tensor {short(name)} appears twice")
        names.add(name)
        nd = r.unpack("I", f"tensor {short(name)} dimension count")
        if not 1 <= nd <= MAX_DIMS:
            r.fail(f"tensor {short(name)} has {nd} dimensions (1..{MAX_DIMS})")
        dims = tuple(r.unpack("Q", f"tensor {short(name)} dimensions") for _ in range(nd))
        tid = r.unpack("I", f"tensor {short(name)} type")
        off = r.unpack("Q", f"tensor {short(name)} offset")
        tensors.append(TensorEntry(name, dims, tid, off))
    return tensors


def _check_tensor(r: _Reader, t: TensorEntry, data: int, size: int) -> None:
    """A known GGML type, no zero dimension, whole blocks per row, data inside the file."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    try:
        qt = GGMLQuantizationType(t.type_id)
    except ValueError:
        r.fail(f"tensor {short(t.name)} has unknown GGML type {t.type_id}")
    if any(d == 0 for d in t.dims):
        raise InputError(f"tensor {short(t.name)} has a zero dimension {list(t.dims)}", r.path)
    n = math.prod(t.dims)
    bs, ts = GGML_QUANT_SIZES[qt]
    if t.dims[0] % bs:
        r.fail(f"tensor {short(t.name)}: row length {t.dims[0]} is not a multiple of the "
               f"{qt.name} block size {bs}")
    nbytes = n // bs * ts
    if data + t.offset + nbytes > size:
        r.fail(f"tensor {short(t.name)} ({qt.name} {list(t.dims)}) lies past the end of the file")


def dequantizable(type_name: str) -> bool:
    from gguf import GGMLQuantizationType, quants
    if type_name in RAW_FLOAT_TYPES:
        return True
    try:
        return GGMLQuantizationType[type_name] in quants._type_traits
    except KeyError:
        return False


def check_tensor(path, name: str, type_name: str) -> None:
    if not dequantizable(type_name):
        raise InputError(f"tensor {short(name)} is stored as {type_name}, which gguf-py cannot dequantize; "
                         "quantgate reads F32/F16/BF16 and gguf-py's quantized types (Q4_0 ... Q8_0, K, IQ)", path)


def orig_shape(path, name: str, field, n_elements: int) -> tuple[int, ...]:
    """``comfy.gguf.orig_shape.<name>`` (ComfyUI-GGUF's logical shape): an integer array of 1..8
    positive dims whose product is the tensor's element count, else InputError."""
    from gguf import GGUFValueType
    key = f"comfy.gguf.orig_shape.{name}"
    types = list(field.types)
    if not types or types[0] != GGUFValueType.ARRAY or len(types) < 2 or types[1] not in (
            GGUFValueType.UINT8, GGUFValueType.INT8, GGUFValueType.UINT16, GGUFValueType.INT16,
            GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.UINT64, GGUFValueType.INT64):
        raise InputError(f"{short(key)} is not an integer array", path)
    dims = tuple(int(field.parts[i][0]) for i in field.data)
    if not 1 <= len(dims) <= 8 or any(d <= 0 for d in dims) or math.prod(dims) != n_elements:
        raise InputError(f"{short(key)} = {str(list(dims))[:80]} does not fit the tensor ({n_elements:,} "
                         "elements)", path)
    return dims
