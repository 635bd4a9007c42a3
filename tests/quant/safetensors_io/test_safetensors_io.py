"""Fuzzing quantgate's own safetensors header parser (issue 3 §1).

Whatever the bytes, ``read_header`` either returns a Header whose every tensor lies inside the file
without overlap, or raises ``InputError`` (one line, exit 2) — never another exception, never a
hang, never an allocation of what the header claims. ``QUANTGATE_FUZZ_EXAMPLES`` sets the number of
cases per test (CI: a moderate default; the ≥10k run: ``QUANTGATE_FUZZ_EXAMPLES=10000``).
"""
from __future__ import annotations

import json
import math
import os
import struct
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant.errors import InputError
from quant.safetensors_io import Header, read_header
from quant.dtypes import DTYPE_BYTES

pytestmark = pytest.mark.fuzz

N = int(os.environ.get("QUANTGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=N, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
_TMP = Path(tempfile.mkdtemp(prefix="qg-fuzz-"))
PER_CASE_LIMIT_S = 2.0


def _check(data: bytes) -> Header | None:
    p = _TMP / "case.safetensors"
    p.write_bytes(data)
    t0 = time.perf_counter()
    try:
        h = read_header(p)
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and msg.startswith(str(p)), msg
        h = None
    assert time.perf_counter() - t0 < PER_CASE_LIMIT_S, "parser took too long (hang?)"
    if h is not None:   # accepted: the header's promises must hold for this file
        size = len(data)
        spans = sorted((t.begin, t.end) for t in h.tensors.values())
        pos = 8 + h.header_len
        for b, e in spans:
            assert b == pos and e <= size
            pos = e
        assert pos == size
        for t in h.tensors.values():
            assert t.end - t.begin == math.prod(t.shape) * DTYPE_BYTES[t.dtype]
    return h


def _file(header: dict | str | bytes, data_len: int, hlen_delta: int = 0, pad: bool = True) -> bytes:
    raw = header if isinstance(header, bytes) else (
        header.encode() if isinstance(header, str) else json.dumps(header, separators=(",", ":")).encode())
    if pad:
        raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", max(0, len(raw) + hlen_delta)) + raw + b"\x00" * data_len


# ---- strategies -------------------------------------------------------------------------------
DTYPES = list(DTYPE_BYTES) + ["F4", "F8_E8M0", "f32", "", "C64"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8))
json_values = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                           max_leaves=12)
dims = st.one_of(st.integers(0, 9), st.integers(-3, 2**64), st.just(True), st.floats(0, 8), st.text(max_size=2))


@st.composite
def headers(draw):
    """A header that is valid most of the time, with plausible-looking damage otherwise."""
    n = draw(st.integers(0, 6))
    hdr: dict = {}
    if draw(st.booleans()):
        hdr["__metadata__"] = draw(st.one_of(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3),
                                             json_values))
    off = 0
    for i in range(n):
        dt = draw(st.sampled_from(DTYPES)) if draw(st.integers(0, 9)) == 0 else draw(st.sampled_from(list(DTYPE_BYTES)))
        shape = draw(st.lists(st.integers(0, 5), max_size=4)) if draw(st.integers(0, 7)) else draw(st.lists(dims, max_size=9))
        ok = all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**20 for d in shape)
        nb = math.prod(shape) * DTYPE_BYTES.get(dt, 1) if ok else 3
        offs: object = [off, off + nb]
        mode = draw(st.integers(0, 12))
        if mode == 0:
            offs = [off - 1, off + nb]                       # overlap with the previous tensor
        elif mode == 1:
            offs = [off + 1, off + nb + 1]                   # gap
        elif mode == 2:
            offs = draw(json_values)                         # garbage
        elif mode == 3:
            offs = [off, off + nb + draw(st.integers(-5, 5))]
        elif mode == 4:
            offs = [2**60, 2**61]
        entry = {"dtype": dt, "shape": shape, "data_offsets": offs}
        if draw(st.integers(0, 15)) == 0:
            entry = draw(json_values)
        hdr[draw(st.text(max_size=10)) if draw(st.integers(0, 5)) == 0 else f"t{i}.weight"] = entry
        off += nb if isinstance(nb, int) and nb >= 0 else 0
    data_len = max(0, off + (draw(st.integers(-4, 4)) if draw(st.integers(0, 3)) == 0 else 0))
    return hdr, data_len


# ---- tests ------------------------------------------------------------------------------------
@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes_never_crash(data):
    _check(data)


@FUZZ
@given(headers(), st.integers(-9, 9), st.booleans())
def test_structured_headers_never_crash(hd, hlen_delta, pad):
    hdr, data_len = hd
    delta = hlen_delta if hlen_delta in (-9, 9, -1, 1) else 0
    _check(_file(hdr, min(data_len, 1 << 16), delta, pad))


@FUZZ
@given(st.data())
def test_mutated_valid_file_never_crashes(data):
    hdr = {"__metadata__": {"format": "pt"},
           "a.weight": {"dtype": "F8_E4M3", "shape": [4, 8], "data_offsets": [0, 32]},
           "a.weight_scale": {"dtype": "F32", "shape": [], "data_offsets": [32, 36]},
           "b": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [36, 44]}}
    buf = bytearray(_file(hdr, 44))
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        buf = buf[: data.draw(st.integers(0, len(buf)))]
    _check(bytes(buf))


@FUZZ
@given(json_values)
def test_any_json_document_as_header(doc):
    _check(_file(json.dumps(doc, allow_nan=True), 0))


# ---- named hostile inputs ---------------------------------------------------------------------
HOSTILE = {
    "2^60 header length": struct.pack("<Q", 2**60) + b"{}",
    "header longer than file": struct.pack("<Q", 4096) + b"{}      ",
    "empty file": b"",
    "7 bytes": b"\x01" * 7,
    "not json": _file(b"\xff\xfe not json", 0),
    "deep nesting": _file("[" * 100000 + "]" * 100000, 0),
    "huge integer": _file('{"a":{"dtype":"F32","shape":[' + "9" * 5000 + '],"data_offsets":[0,4]}}', 4),
    "overlapping offsets": _file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, 12),
    "duplicate names": _file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                             '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', 8),
    "size != dtype x shape": _file({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, 8),
    "claims 2^60 elements": _file({"a": {"dtype": "F32", "shape": [2**30, 2**30], "data_offsets": [0, 4]}}, 4),
    "truncated data": _file({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, 10),
    "unknown dtype": _file({"a": {"dtype": "F8_E8M0", "shape": [4], "data_offsets": [0, 4]}}, 4),
    "negative shape": _file({"a": {"dtype": "U8", "shape": [-4], "data_offsets": [0, 4]}}, 4),
    "metadata not strings": _file({"__metadata__": {"x": 1}}, 0),
    "trailing bytes": _file({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, 9),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_inputs_rejected_with_one_line(name):
    assert _check(HOSTILE[name]) is None, f"{name} was accepted"


def test_valid_file_accepted():
    h = _check(_file({"__metadata__": {"k": "v"},
                      "a": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]},
                      "e": {"dtype": "U8", "shape": [0], "data_offsets": [4, 4]}}, 4))
    assert h is not None and h.tensors["a"].shape == () and h.metadata == {"k": "v"}
