"""Per-output-channel and per-16-block bounds of the numeric check (issue 8).

On a layer with 2,048 output channels a whole-tensor limit passes two swapped rows, a negated row,
eight zeroed rows (fp8) or swapped rows / one row's swapped nibbles (nvfp4): the tensor error stays
under the limit while those channels are wrong by 100-200 %. The format's own worst case per row
(fp8) and per block (nvfp4) catches each of them and names the rows; converter output passes.
"""
from __future__ import annotations

import pytest
import torch

from harness.fixtures.planted.format_defects import load, save
from harness.verify import verify
from quant.convert import convert
from quant.kernels.nvfp4 import swizzle, unswizzle

LAYER = "blocks.0.ffn.0"
N, K = 2048, 256


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("rows")
    g = torch.Generator().manual_seed(11)
    w = torch.randn(N, K, generator=g) * 0.02
    w[:, :3] *= 6.0                      # outlier input channels, as real layers have
    w[7] *= 1e-3                         # a nearly dead output channel
    src = d / "src_bf16.safetensors"
    save({f"{LAYER}.weight": w.to(torch.bfloat16), f"{LAYER}.bias": torch.zeros(N, dtype=torch.bfloat16)}, {}, src)
    out = {"src": src}
    for fmt in ("fp8", "nvfp4"):
        out[fmt] = d / f"{fmt}.safetensors"
        convert(src, out[fmt], fmt, "smart")
    return out


def _rules(rep):
    return {f.rule for f in rep.findings.all() if f.severity == "error"}


def _rows_finding(rep):
    return next(f for f in rep.findings.all() if f.rule == "numeric.rows")


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
def test_converter_output_passes_the_row_bounds(files, fmt):
    rep = verify(files[fmt], files["src"])
    assert rep.passed and "numeric.rows" not in _rules(rep), [f.line() for f in rep.findings.all()]


def _plant_fp8(files, tmp_path, how):
    t, meta = load(files["fp8"])
    q = t[f"{LAYER}.weight"].view(torch.uint8).clone()
    rows = how(q)
    t[f"{LAYER}.weight"] = q.view(torch.float8_e4m3fn)
    return save(t, meta, tmp_path / "planted.safetensors"), rows


def _swap(q, a=3, b=4):
    q[[a, b]] = q[[b, a]]
    return [a, b]


def _negate(q, r=10):
    q[r] ^= 0x80
    return [r]


def _zero8(q):
    q[20:28] = 0
    return list(range(20, 28))


@pytest.mark.parametrize("how", [_swap, _negate, _zero8], ids=["two rows swapped", "one row negated", "eight rows zeroed"])
def test_fp8_broken_rows_are_caught_and_named(files, tmp_path, how):
    p, rows = _plant_fp8(files, tmp_path, how)
    rep = verify(p, files["src"])
    assert not rep.passed
    assert "numeric.mismatch" not in _rules(rep)          # the whole-tensor limit alone passes it
    f = _rows_finding(rep)
    assert f.layers == [LAYER]
    assert f"{len(rows)} of {N} output channels" in f.message
    assert all(str(r) in f.message for r in rows)


def _plant_nvfp4(files, tmp_path, how):
    t, meta = load(files["nvfp4"])
    p = t[f"{LAYER}.weight"].clone()
    s = t[f"{LAYER}.weight_scale"].view(torch.uint8)
    logical = unswizzle(s, p.shape[0], p.shape[1] * 2 // 16).clone()
    rows = how(p, logical)
    t[f"{LAYER}.weight"] = p
    t[f"{LAYER}.weight_scale"] = swizzle(logical).view(torch.float8_e4m3fn).reshape(s.shape)
    return save(t, meta, tmp_path / "planted.safetensors"), rows


def _nv_swap(p, logical, a=3, b=4):               # output channels exchanged (codes and their scales)
    p[[a, b]] = p[[b, a]]
    logical[[a, b]] = logical[[b, a]]
    return [a, b]


def _nv_swap8(p, logical):
    rows = list(range(100, 108))
    perm = rows[1:] + rows[:1]
    p[rows] = p[perm]
    logical[rows] = logical[perm]
    return rows


def _nv_nibbles(p, logical, r=5):
    p[r] = (p[r] >> 4) | (p[r] << 4)
    return [r]


@pytest.mark.parametrize("how", [_nv_swap, _nv_swap8, _nv_nibbles],
                         ids=["two rows swapped", "eight rows rotated", "one row's nibbles swapped"])
def test_nvfp4_broken_rows_are_caught_and_named(files, tmp_path, how):
    p, rows = _plant_nvfp4(files, tmp_path, how)
    rep = verify(p, files["src"])
    assert not rep.passed
    assert "numeric.mismatch" not in _rules(rep)
    f = _rows_finding(rep)
    assert f"{len(rows)} of {N} output channels" in f.message and "blocks of 16" in f.message
    assert all(str(r) in f.message for r in rows)


def test_row_bounds_hold_for_any_neighbour_rounding():
    """The bound is the format's: rounding every value to its *other* representable neighbour (the
    worst a learned rounding may do) stays inside it; one step further does not."""
    from harness.verify.row_bounds import fp8_bad_rows
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 512, generator=g) * 0.05
    s = float(x.abs().max()) / 448
    q = (x / s).to(torch.float8_e4m3fn)                     # round to nearest
    codes = q.view(torch.uint8)
    table = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float() * s
    # the other neighbour: step the magnitude code one up or down towards x
    dec = q.float() * s
    towards = torch.where(dec.abs() < x.abs(), 1, -1).to(torch.int16)
    mag = (codes & 0x7F).to(torch.int16)
    other = torch.where((mag + towards >= 0) & (mag + towards <= 0x7E), mag + towards, mag)
    other_codes = ((codes & 0x80).to(torch.int16) | other).to(torch.uint8)
    assert fp8_bad_rows(codes, table, s, x)[1] == 0
    assert fp8_bad_rows(other_codes, table, s, x)[1] == 0
    far = ((codes & 0x80).to(torch.int16) | torch.clamp(mag + 3 * towards, 0, 0x7E)).to(torch.uint8)
    assert fp8_bad_rows(far, table, s, x)[1] > 0
