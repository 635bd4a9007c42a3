"""Structure-aware fuzzers for GGUF files and index.json (issue 8; the safetensors header fuzzer is
tests/quant/safetensors_io/test_safetensors_parity.py).

Property, whatever the bytes: opening the source either works -- and then every promise holds
(shapes fit the data, every tensor dequantizes, every shard lies inside the index's directory) --
or raises ``InputError`` (one line, exit 2); never another exception, never a hang. Cases are
built from the formats' structure (then mutated: counts and lengths up to 2**64, wrong types,
truncation, flipped bytes), so they get past the magic and into the parsers.
``QUANTGATE_FUZZ_EXAMPLES`` sets the number of cases per fuzzer (CI: a small default).
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests._gguf_bytes import gguf, kv_array, kv_scalar, kv_string
from quant.errors import InputError

pytestmark = pytest.mark.fuzz

N = int(os.environ.get("QUANTGATE_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=N, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
PER_CASE_S = 5.0
_TMP = Path(tempfile.mkdtemp(prefix="qg-fuzz-inputs-"))

# ---- GGUF -------------------------------------------------------------------------------------------------
BIG = [0, 1, 2, 3, 16, 255, 2**16, 2**31, 2**32, 2**32 + 1, 2**60, 2**63, 2**64 - 1]
_count = st.one_of(st.integers(0, 4), st.sampled_from(BIG))
_scalar_kind = st.sampled_from(["u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "u64", "i64", "f64"])
_RANGES = {"u8": (0, 255), "i8": (-128, 127), "u16": (0, 2**16 - 1), "i16": (-2**15, 2**15 - 1),
           "u32": (0, 2**32 - 1), "i32": (-2**31, 2**31 - 1), "u64": (0, 2**64 - 1), "i64": (-2**63, 2**63 - 1)}


def _scalar_value(kind):
    if kind in _RANGES:
        lo, hi = _RANGES[kind]
        return st.integers(lo, hi)
    if kind == "bool":
        return st.booleans()
    return st.floats(allow_nan=True, width=32 if kind == "f32" else 64)


@st.composite
def _kv(draw, i: int, names: list[str]):
    key = draw(st.sampled_from([f"k{i}"] * 6 + ["general.architecture", "general.alignment"]
                               + [f"comfy.gguf.orig_shape.{n}" for n in names]))
    which = draw(st.integers(0, 3))
    if which == 0:
        kind = draw(_scalar_kind)
        return kv_scalar(key, kind, draw(_scalar_value(kind)))
    if which == 1:
        s = draw(st.text(max_size=8))
        return kv_string(key, s, draw(st.one_of(st.none(), st.none(), st.none(), _count)))
    if which == 2 or key.startswith("comfy.gguf.orig_shape"):
        kind = draw(st.sampled_from(["i32", "u32", "i64", "u64", "u8", "f32"]))
        items = draw(st.lists(_scalar_value(kind), max_size=5))
        return kv_array(key, kind, items, draw(st.one_of(st.none(), st.none(), _count)))
    items = draw(st.lists(st.text(max_size=4), max_size=3))
    return kv_array(key, "str", items, draw(st.one_of(st.none(), st.none(), _count)))


_TYPES = [0, 1, 30, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 20, 23, 9, 15, 24, 25, 26, 27, 28, 34, 39, 41, 99, 2**31]


@st.composite
def gguf_files(draw) -> bytes:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    n = draw(st.integers(0, 3))
    names = [draw(st.sampled_from([f"blocks.{i}.w.weight", "w", "blocks.0.w.weight", ""])) for i in range(n)]
    tensors = []
    for name in names:
        tid = draw(st.sampled_from(_TYPES if draw(st.integers(0, 3)) == 0 else [0, 1, 30, 8, 12, 14, 2]))
        try:
            bs, ts = GGML_QUANT_SIZES[GGMLQuantizationType(tid)]
        except ValueError:
            bs, ts = 1, 4
        nd = draw(st.integers(1, 3))
        dims = [bs * draw(st.integers(1, 2))] + [draw(st.integers(1, 3)) for _ in range(nd - 1)]
        m = draw(st.integers(0, 24))
        if m == 1:
            dims[draw(st.integers(0, nd - 1))] = 0
        elif m == 2:
            dims[draw(st.integers(0, nd - 1))] = draw(st.sampled_from(BIG))
        elif m == 3:
            dims = dims + [1] * draw(st.integers(3, 6))
        nbytes = math.prod(dims) // bs * ts if m != 2 else 64
        if m == 4:
            nbytes = max(0, nbytes - draw(st.integers(1, 8)))
        raw = bytes(draw(st.binary(min_size=min(nbytes, 64), max_size=min(nbytes, 64)))) + b"\0" * max(0, nbytes - 64)
        tensors.append((name, tuple(dims), tid, raw))
    kvs = [draw(_kv(i, names)) for i in range(draw(st.integers(0, 4)))]
    for name, dims, tid, raw in tensors:            # ComfyUI-GGUF's logical shape, mostly right
        if draw(st.integers(0, 3)) == 0:
            logical = list(reversed(dims))
            if draw(st.integers(0, 4)) == 0:
                logical = [math.prod(dims)]
            logical = [min(d, 2**64 - 1) for d in logical]
            kind = draw(st.sampled_from(["i32", "u32", "i64"])) if max(logical) < 2**31 else "u64"
            kvs.append(kv_array(f"comfy.gguf.orig_shape.{name}", kind, logical))
    if draw(st.booleans()):
        kvs.insert(0, kv_string("general.architecture", "wan"))
    rare = st.one_of(*([st.none()] * 9), _count)
    data = gguf(kvs, tensors, n_tensors=draw(rare), n_kv=draw(rare),
                version=draw(st.sampled_from([3] * 10 + [2, 1, 4, 2**16])))
    cut = draw(st.integers(0, 20))
    if cut == 1:
        data = data[:draw(st.integers(0, len(data)))]
    elif cut == 2 and len(data) > 24:
        i = draw(st.integers(4, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1:]
    return data


def _check_gguf(data: bytes) -> str:
    from quant.sources import open_source
    p = _TMP / "case.gguf"
    p.write_bytes(data)
    t0 = time.monotonic()
    try:
        with open_source(p) as src:
            for name in src.keys():
                info = src.info(name)
                t = src.get(name)
                assert tuple(t.shape) == tuple(info.shape), (name, t.shape, info.shape)
                assert all(d > 0 for d in info.shape)
        outcome = "opened"
    except InputError as e:
        msg = str(e)
        assert "\n" not in msg and len(msg) < 1000 and msg.startswith(str(p)), msg[:300]
        outcome = "refused"
    assert time.monotonic() - t0 < PER_CASE_S, "GGUF reading took too long (hang?)"
    return outcome


@FUZZ
@given(gguf_files())
def test_fuzz_gguf(data):
    event(_check_gguf(data))


def test_gguf_fuzzer_reaches_good_files():
    """The generator's unmutated output opens (so the fuzzer tests the readers, not only the magic)."""
    from quant.sources import open_source
    from gguf import GGMLQuantizationType, quants
    w = quants.quantize(np.linspace(-1, 1, 64 * 2, dtype=np.float32).reshape(2, 64), GGMLQuantizationType.Q8_0)
    p = _TMP / "good.gguf"
    p.write_bytes(gguf([kv_string("general.architecture", "wan"), kv_array("comfy.gguf.orig_shape.w", "i32", [2, 64])],
                       [("w", (64, 2), 8, w.tobytes())]))
    with open_source(p) as src:
        assert src.info("w").shape == (2, 64) and src.get("w").shape == (2, 64)
    assert _check_gguf(p.read_bytes()) == "opened"


# ---- index.json ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def index_dir():
    import torch

    from quant.safetensors_io import save_file
    root = Path(tempfile.mkdtemp(prefix="qg-fuzz-index-"))
    d, out = root / "model", root / "outside"
    d.mkdir()
    out.mkdir()
    save_file({"x": torch.zeros(2)}, d / "a.safetensors")
    save_file({"y": torch.ones(2)}, d / "b.safetensors")
    save_file({"z": torch.ones(3)}, out / "c.safetensors")
    (d / "link.safetensors").symlink_to(out / "c.safetensors")
    (d / "sub").mkdir()
    save_file({"w": torch.ones(1)}, d / "sub" / "d.safetensors")
    (d / "notes.txt").write_text("not a tensor file\n")
    return d


_SHARD = st.sampled_from(["a.safetensors", "b.safetensors", "../outside/c.safetensors", "link.safetensors",
                          "sub/d.safetensors", "sub/../a.safetensors", "./b.safetensors", "notes.txt", "",
                          "missing.safetensors", "a.safetensors\0", "/etc/hostname", "sub", ".", "..",
                          "\\ud800.safetensors"])
_json_leaf = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=6), st.booleans(),
                       st.none())
_json_any = st.recursive(_json_leaf, lambda c: st.one_of(st.lists(c, max_size=3),
                                                          st.dictionaries(st.text(max_size=4), c, max_size=3)),
                         max_leaves=6)


@st.composite
def index_texts(draw, absolute_c: str) -> str:
    keys = draw(st.lists(st.sampled_from(["x", "y", "z", "w", "q", "__metadata__", ""]), max_size=5))
    wm = {}
    for k in keys:
        v = draw(st.one_of(_SHARD, _SHARD, _SHARD, st.just(absolute_c), _json_any))
        wm[k] = v
    obj = {"weight_map": wm} if draw(st.integers(0, 8)) else draw(_json_any)
    if draw(st.booleans()) and isinstance(obj, dict):
        obj["metadata"] = draw(_json_any)
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    text = text.replace('"\\\\ud800', '"\\ud800')           # a real lone-surrogate escape
    m = draw(st.integers(0, 12))
    if m == 1:
        text = "[" * draw(st.sampled_from([10, 100, 1000, 100_000])) + text
    elif m == 2:
        text = text.replace("0", "NaN", 1)
    elif m == 3:
        text = text[:draw(st.integers(0, len(text)))]
    elif m == 4:
        text = text.replace("1", "1" + "7" * 5000, 1)
    return text


def test_fuzz_index_json(index_dir):
    absolute_c = str(index_dir.parent / "outside" / "c.safetensors")

    @FUZZ
    @given(index_texts(absolute_c))
    def run(text):
        from quant.sources import open_source
        p = index_dir / "model.safetensors.index.json"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        t0 = time.monotonic()
        try:
            with open_source(p) as src:
                root = index_dir.resolve()
                for f in src.files:
                    assert Path(f).resolve().is_relative_to(root), f
                wm = json.loads(text)["weight_map"]
                assert set(wm) <= set(src.keys())
                for k in wm:
                    src.get(k)
            event("opened")
        except InputError as e:
            msg = str(e)
            assert "\n" not in msg and len(msg) < 1000, msg[:300]
            event("refused")
        assert time.monotonic() - t0 < PER_CASE_S

    run()
