"""A byte-level GGUF writer for tests: it writes whatever it is told (lengths, counts, types,
offsets), so malformed files are as easy to make as good ones."""
from __future__ import annotations

import struct

SCALAR = {"u8": (0, "B"), "i8": (1, "b"), "u16": (2, "H"), "i16": (3, "h"), "u32": (4, "I"), "i32": (5, "i"),
          "f32": (6, "f"), "bool": (7, "?"), "u64": (10, "Q"), "i64": (11, "q"), "f64": (12, "d")}
STRING, ARRAY = 8, 9


def gstr(s: str | bytes, declared_len: int | None = None) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b) if declared_len is None else declared_len) + b


def kv_scalar(key: str, kind: str, v) -> bytes:
    t, code = SCALAR[kind]
    return gstr(key) + struct.pack("<I", t) + struct.pack("<" + code, v)


def kv_string(key: str, v: str, declared_len: int | None = None) -> bytes:
    return gstr(key) + struct.pack("<I", STRING) + gstr(v, declared_len)


def kv_array(key: str, kind: str, items, declared_count: int | None = None) -> bytes:
    if kind == "str":
        body = b"".join(gstr(x) for x in items)
        itype = STRING
    else:
        itype, code = SCALAR[kind]
        body = b"".join(struct.pack("<" + code, x) for x in items)
    n = len(items) if declared_count is None else declared_count
    return gstr(key) + struct.pack("<I", ARRAY) + struct.pack("<IQ", itype, n) + body


def tensor_info(name: str, dims, type_id: int, offset: int) -> bytes:
    return gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", type_id, offset)


def gguf(kvs: list[bytes], tensors: list[tuple[str, tuple, int, bytes]], *, n_tensors: int | None = None,
         n_kv: int | None = None, version: int = 3, align: int = 32) -> bytes:
    """``tensors``: (name, ggml dims, ggml type id, data bytes); data laid out aligned, in order."""
    infos, data, off = [], b"", 0
    for name, dims, tid, raw in tensors:
        off += -off % align
        data += b"\0" * (off - len(data))
        infos.append(tensor_info(name, dims, tid, off))
        data += raw
        off += len(raw)
    head = b"GGUF" + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors, len(kvs) if n_kv is None else n_kv)
    head += b"".join(kvs) + b"".join(infos)
    head += b"\0" * (-len(head) % align)
    return head + data
