"""quantgate's safetensors header parser accepts exactly what the safetensors library accepts.

The same bytes go to ``quant.safetensors_io.read_header`` and to ``safetensors.safe_open`` (the
Rust parser ComfyUI loads files with). Where the library refuses, we refuse (a file ComfyUI cannot
load never passes ``verify``); where it accepts, we accept -- except dtypes quantgate does not handle
(F4, F6_*, F8_E8M0, *FNUZ, C64), which we refuse with a message saying exactly that.

The named cases are the ones an adversarial run found (``__metadata__`` 0/false/[]/"", NaN, lone
surrogates, ...); the hypothesis fuzzer generates header *text* (not only valid JSON) so it reaches
the grammar corners: "-0", 1e400, NaN, duplicate keys, raw control characters, deep nesting.
``QUANTGATE_FUZZ_EXAMPLES`` sets the number of fuzz cases (CI: a small default).
"""
from __future__ import annotations

import json
import os
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from quant.errors import InputError
from quant.safetensors_io import SAFETENSORS_BITS, read_header
from quant.dtypes import DTYPE_BYTES

safetensors = pytest.importorskip("safetensors")

N = int(os.environ.get("QUANTGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=N, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
_TMP = Path(tempfile.mkdtemp(prefix="qg-parity-"))
UNSUPPORTED = "is valid safetensors but not supported by quantgate"


def _theirs(p: Path) -> bool:
    try:
        with safetensors.safe_open(str(p), "numpy") as f:
            list(f.keys())
            f.metadata()
        return True
    except Exception:        # SafetensorError (and nothing else expected)
        return False


def _ours(p: Path) -> tuple[bool, str]:
    try:
        read_header(p)
        return True, ""
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and len(msg) < 2000, msg[:300]
        return False, msg


def assert_parity(data: bytes, name: str = "case.safetensors") -> bool:
    p = _TMP / name
    p.write_bytes(data)
    theirs = _theirs(p)
    ours, msg = _ours(p)
    if theirs and not ours:
        assert UNSUPPORTED in msg, f"safetensors accepts, quantgate refuses: {msg}\n{data[:400]!r}"
    else:
        assert ours == theirs, (f"quantgate {'accepts' if ours else 'refuses'}, safetensors "
                                f"{'accepts' if theirs else 'refuses'}: {msg}\n{data[:400]!r}")
    return ours


def _file(header: str | bytes, data: bytes = b"") -> bytes:
    raw = header.encode("utf-8", "surrogatepass") if isinstance(header, str) else header
    return struct.pack("<Q", len(raw)) + raw + data


T = '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}'
Z4 = b"\0" * 4
NAMED = {
    "ok": (_file("{" + T + "}", Z4), True),
    "no tensors": (_file("{}"), True),                      # valid for the library (verify refuses it)
    "metadata null": (_file('{"__metadata__":null}'), True),
    "metadata 0": (_file('{"__metadata__":0,' + T + "}", Z4), False),
    "metadata false": (_file('{"__metadata__":false,' + T + "}", Z4), False),
    "metadata []": (_file('{"__metadata__":[],' + T + "}", Z4), False),
    'metadata ""': (_file('{"__metadata__":"",' + T + "}", Z4), False),
    "metadata twice": (_file('{"__metadata__":{},"__metadata__":{},' + T + "}", Z4), False),
    "metadata value int": (_file('{"__metadata__":{"k":1},' + T + "}", Z4), False),
    "metadata key repeated": (_file('{"__metadata__":{"k":"a","k":"b"},' + T + "}", Z4), True),
    "NaN in an entry": (_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":NaN}}', Z4), False),
    "Infinity in an entry": (_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":-Infinity}}', Z4), False),
    "1e400 in an entry": (_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1e400}}', Z4), False),
    "400-digit int in an entry": (_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1'
                                        + "0" * 400 + "}}", Z4), False),
    "5000-digit int": (_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + "7" * 5000 + "}}",
                             Z4), False),
    "unknown field": (_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[1,{"y":null}]}}', Z4), True),
    "lone surrogate in a name": (_file('{"\\ud800":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', Z4), False),
    "lone low surrogate in metadata": (_file('{"__metadata__":{"k":"x\\udc00"},' + T + "}", Z4), False),
    "lone surrogate in an unknown field": (_file('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],'
                                                 '"x":"\\udbff"}}', Z4), False),
    "surrogate pair": (_file('{"\\ud83d\\ude00":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', Z4), True),
    "shape -0": (_file('{"a":{"dtype":"F32","shape":[-0],"data_offsets":[0,0]}}'), False),
    "shape 1.0": (_file('{"a":{"dtype":"F32","shape":[1.0],"data_offsets":[0,4]}}', Z4), False),
    "shape true": (_file('{"a":{"dtype":"U8","shape":[true],"data_offsets":[0,1]}}', b"\0"), False),
    "ten dims": (_file('{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}', Z4), True),
    "huge dim times zero": (_file('{"a":{"dtype":"U8","shape":[1099511627776,0],"data_offsets":[0,0]}}'), True),
    "overflow before a zero": (_file('{"a":{"dtype":"U8","shape":[4294967296,4294967296,0],'
                                     '"data_offsets":[0,0]}}'), False),
    "zero before an overflow": (_file('{"a":{"dtype":"U8","shape":[0,4294967296,4294967296],'
                                      '"data_offsets":[0,0]}}'), True),
    "dim 2^64": (_file('{"a":{"dtype":"U8","shape":[18446744073709551616,0],"data_offsets":[0,0]}}'), False),
    "repeated tensor, last wins": (_file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                                         '"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}', b"\0\0"), True),
    "repeated tensor, the first one invalid": (_file('{"t0":{"dtype":"BOOL","shape":{},"data_offsets":[0,0]},'
                                                    '"t0":{"dtype":"BOOL","shape":[],"data_offsets":[0,1]}}', b"\0"),
                                              False),                        # found by the fuzzer
    "repeated field": (_file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"dtype":"U8"}}', b"\0"), False),
    "entry null": (_file('{"a":null}'), False),
    "top-level array": (_file("[]"), False),
    "trailing NUL": (_file("{}\0"), False),
    "trailing spaces": (_file("{}    "), True),
    "form feed": (_file("{}\x0c"), False),
    "BOM": (_file("\ufeff{}"), False),
    "raw control char": (_file('{"__metadata__":{"k":"\x01"}}'), False),
    "nesting 125": (_file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + "[" * 125 + "]" * 125
                          + "}}", b"\0"), True),
    "nesting 126": (_file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":' + "[" * 126 + "]" * 126
                          + "}}", b"\0"), False),
    "nesting 100,000": (_file('{"a":' + "[" * 100_000 + "]" * 100_000 + "}"), False),
    "gap": (_file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"\0\0"), False),
    "overlap": (_file('{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
                      '"b":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"), False),
    "bytes after the data": (_file("{" + T + "}", Z4 + b"\0"), False),
    "F4 (valid, unsupported)": (_file('{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}', b"\0"), False),
    "F4 odd count": (_file('{"a":{"dtype":"F4","shape":[1],"data_offsets":[0,1]}}', b"\0"), False),
    "invalid UTF-8": (_file(b'{"\xff":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"), False),
    "UTF-8 encoded surrogate": (_file(b'{"\xed\xa0\x80":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
                                False),
    "short file": (b"{}", False),
    "length past the end": (struct.pack("<Q", 100) + b"{}", False),
    "length over the limit": (struct.pack("<Q", 100_000_001) + b"{}", False),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_named_cases_match_the_library(name):
    data, expected = NAMED[name]
    ours = assert_parity(data)
    assert ours == expected, name


def run_main(*args) -> tuple[int, str, str]:
    """``quantgate ARGS`` in this process (no interpreter start-up): exit code, stdout, stderr.
    Anything but a handled error escapes as an exception and fails the test."""
    import contextlib
    import io

    from harness.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def test_lone_surrogates_never_crash_a_command(tmp_path, monkeypatch):
    """A lone surrogate anywhere: every command ends with one line and exit 2, no traceback."""
    monkeypatch.delenv("QUANTGATE_DEBUG", raising=False)
    bad = tmp_path / "surrogate.safetensors"
    bad.write_bytes(NAMED["lone surrogate in a name"][0])
    meta = tmp_path / "surrogate_meta.safetensors"
    meta.write_bytes(NAMED["lone low surrogate in metadata"][0])
    for f in (bad, meta):
        for args in (("verify", f), ("convert", f, "-o", tmp_path / "o.safetensors"), ("inspect", f),
                     ("diff", f, f), ("plan", f)):
            rc, _, err = run_main(*args)
            assert rc == 2, (args, err)
            assert len(err.strip().splitlines()) == 1 and "surrogate" in err, err
            err.encode("utf-8")             # printable on a UTF-8 terminal
    assert not (tmp_path / "o.safetensors").exists()


# ---- the fuzzer ---------------------------------------------------------------------------------
DTYPES = list(SAFETENSORS_BITS) + ["f32", "F8", "", "BF16 "]

_num_text = st.one_of(
    st.integers(-3, 300).map(str), st.just("-0"), st.just("0.0"), st.just("1e2"), st.just("1e400"),
    st.just("-1e400"), st.just("1e-400"), st.just("NaN"), st.just("Infinity"), st.just("18446744073709551615"),
    st.just("18446744073709551616"), st.just("1" + "0" * 320), st.just("-9223372036854775809"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr))
_str_text = st.one_of(
    st.text(max_size=6).map(lambda s: json.dumps(s, ensure_ascii=st_choice_ascii(s))),
    st.sampled_from(['"\\ud800"', '"a\\udfff"', '"\\ud83d\\ude00"', '"\\ud83d"', '"\x01"', '"\\u0000"',
                     '"__metadata__"', '"\\"q"', '"\\x"']))


def st_choice_ascii(s: str) -> bool:
    return len(s) % 2 == 0


_value_text = st.recursive(
    st.one_of(_num_text, _str_text, st.sampled_from(["true", "false", "null"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3).map(lambda xs: "[" + ",".join(xs) + "]"),
        st.lists(st.tuples(_str_text, inner), max_size=3).map(
            lambda kv: "{" + ",".join(f"{k}:{v}" for k, v in kv) + "}")),
    max_leaves=8)


@st.composite
def headers(draw):
    """A safetensors file: mostly-valid tensors laid out back to back, then mutated."""
    n = draw(st.integers(0, 4))
    entries, off = [], 0
    for i in range(n):
        dt = draw(st.sampled_from(DTYPES) if draw(st.integers(0, 9)) == 0 else
                  st.sampled_from(list(DTYPE_BYTES)))
        shape = draw(st.lists(st.integers(0, 5), max_size=3))
        bits = SAFETENSORS_BITS.get(dt, 8)
        numel = 1
        for d in shape:
            numel *= d
        size = numel * bits // 8
        b, e = off, off + size
        off = e
        shape_t = "[" + ",".join(map(str, shape)) + "]"
        offs_t = f"[{b},{e}]"
        m = draw(st.integers(0, 60))
        if m == 1:
            offs_t = f"[{b},{e + 1}]"
        elif m == 2:
            offs_t = f"[{e},{b}]"
        elif m == 3:
            shape_t = draw(_value_text)
        elif m == 4:
            offs_t = draw(_value_text)
        elif m == 5:
            shape_t = "[" + ",".join(draw(st.lists(_num_text, max_size=3))) + "]"
        elif m == 6:
            offs_t = "[" + ",".join(draw(st.lists(_num_text, max_size=3))) + "]"
        fields = [f'"dtype":{json.dumps(dt)}', f'"shape":{shape_t}', f'"data_offsets":{offs_t}']
        if m == 7:
            fields.append(f'"extra":{draw(_value_text)}')
        elif m == 8:
            fields.append(fields[draw(st.integers(0, 2))])
        elif m == 9:
            fields.pop(draw(st.integers(0, 2)))
        fields = draw(st.permutations(fields))
        name = draw(st.sampled_from([f'"t{i}"'] * 8 + ['"t0"', '"__metadata__"', None]))
        if name is None:
            name = draw(_str_text)
        entry = "{" + ",".join(fields) + "}" if m != 10 else draw(_value_text)
        entries.append(f"{name}:{entry}")
    meta = draw(st.integers(0, 14))
    if meta == 1:
        entries.insert(0, '"__metadata__":null')
    elif meta == 2:
        kv = draw(st.lists(st.tuples(_str_text, _str_text), max_size=3))
        entries.insert(draw(st.integers(0, len(entries))),
                       '"__metadata__":{' + ",".join(f"{k}:{v}" for k, v in kv) + "}")
    elif meta == 3:
        entries.insert(0, f'"__metadata__":{draw(_value_text)}')
    elif meta == 4:
        entries += ['"__metadata__":{}', '"__metadata__":{}']
    text = "{" + ",".join(entries) + "}"
    ws = draw(st.sampled_from(["", "", "", "", " ", "   ", "\n", "\t\r", "\x0c", "\0", "x", "}"]))
    text = text + ws if draw(st.booleans()) else ws + text
    raw = text.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 15)) == 0 and raw:          # one flipped byte anywhere in the header
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    data = b"\0" * max(0, off + draw(st.sampled_from([0] * 12 + [-1, 1])))
    hlen = len(raw) + draw(st.sampled_from([0] * 16 + [-1, 1, 1 << 40]))
    return struct.pack("<Q", max(0, hlen)) + raw + data


@pytest.mark.fuzz
@FUZZ
@given(headers())
def test_fuzz_parity_with_the_safetensors_library(data):
    p = _TMP / "fuzz.safetensors"
    ours = assert_parity(data, p.name)
    event("accepted by both" if ours else "refused by quantgate (library: " + ("accepts" if _theirs(p) else "refuses") + ")")


def test_supported_dtypes_are_the_library_dtypes_we_read():
    assert set(DTYPE_BYTES) <= set(SAFETENSORS_BITS)
    assert all(SAFETENSORS_BITS[d] == 8 * DTYPE_BYTES[d] for d in DTYPE_BYTES)
