"""W4A8 Triton kernel (quant/kernels/triton_w4a8.py) under Triton's CPU interpreter, against comfy-kitchen 0.2.40's
eager reference on the same (CPU) tensors: the bytes of every output. Run by tests/quant/kernels/test_triton_w4a8.py
in a fresh interpreter with TRITON_INTERPRET=1; not collected on its own."""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by tests/quant/kernels/test_triton_w4a8.py under TRITON_INTERPRET=1", allow_module_level=True)

ek = pytest.importorskip("comfy_kitchen.backends.eager.w4a8_int8")
from comfy_kitchen.tensor import quantize_w4a8_int8_weight  # noqa: E402

from quant.formats import convrot, w4a8_int8  # noqa: E402
from tests.quant.kernels.edges import W4A8_GROUP_KINDS, w4a8_codebook, w4a8_rotated  # noqa: E402

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True)
def _triton_opted_in(monkeypatch):
    monkeypatch.setattr(w4a8_int8, "TRITON", True)      # the opt-in path is what these cases test


@pytest.fixture(scope="module")
def tw():
    from quant.kernels import triton_quant, triton_w4a8
    assert triton_quant.available("cpu") and triton_quant.interpreted()
    return triton_w4a8


class _Seam:
    """The kernel seam's op as the Triton backend serves it, but on CPU tensors (the interpreter)."""

    def __init__(self, tw):
        self.tw, self.calls = tw, 0

    def quantize_w4a8_rotated(self, r, codebook, *, name=None, check_finite="sync"):
        p, sr, sc, amax = self.tw.quantize_w4a8_rotated(r, codebook, hw=False)
        assert torch.isfinite(amax)
        self.calls += 1
        return p, sr, sc


def _bytes(t):
    return t.contiguous().view(torch.uint8) if t.element_size() == 1 else t.contiguous()


def _same(ours, theirs):
    for a, b, what in zip(ours, theirs, ("packed", "s_rel", "s_channel")):
        assert a.dtype == b.dtype and a.shape == b.shape, what
        ne = (_bytes(a) != _bytes(b)).nonzero()
        assert ne.numel() == 0, f"{what}: {ne.shape[0]} of {a.numel()} differ, first at {ne[0].tolist()}"


def test_the_cpu_sum_order_is_found_and_is_torchs(tw):
    order = tw.sum_order("cpu")
    assert order in tw.ORDERS
    g = torch.Generator().manual_seed(7)
    v = torch.randn(500, 3, 16, generator=g) * torch.exp(4 * torch.randn(500, 3, 16, generator=g))
    assert torch.equal(tw._order_candidates(v)[order], v.sum(-1))
    # the orders are distinguishable on such data (else the probe would prove nothing)
    sums = tw._order_candidates(v)
    assert all(not torch.equal(sums[a], sums[b]) for a in sums for b in sums if a < b)


KINDS = W4A8_GROUP_KINDS


@st.composite
def rotated(draw):
    n = draw(st.integers(1, 9))
    k = 16 * draw(st.sampled_from([1, 2, 3, 5, 16, 17, 33]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=4))
    mag = draw(st.sampled_from([1e-6, 1e-2, 1.0, 100.0]))
    return w4a8_rotated(n, k, kinds, mag, dtype, g)


_codebook = w4a8_codebook


@settings(max_examples=20, **SETTINGS)
@given(r=rotated(), cbk=st.sampled_from(["fixed", "fixed", "random", "duplicates", "narrow", "unsorted"]), seed=st.integers(0, 99))
def test_rotated_part_bytes_equal_kitchen_eager(tw, r, cbk, seed):
    cb = _codebook(cbk, torch.Generator().manual_seed(seed))
    theirs = ek._quantize_rotated_w4a8_int8_weight(r, 16, codebook_override=cb)
    order = tw.sum_order("cpu")
    srt = bool((cb[1:] >= cb[:-1]).all())
    p, sr, sc, amax = tw.quantize_w4a8_rotated_async(r, cb, order, tw.e4m3_overflow("cpu"), hw=False, sorted_levels=srt)
    _same((p, sr, sc), theirs[:3])
    if srt:     # the binary search is right on sorted levels too, and so is each search variant
        _same(tw.quantize_w4a8_rotated_async(r, cb, order, tw.e4m3_overflow("cpu"), hw=False)[:3], theirs[:3])
        lut = tw.bucket_table(cb)
        assert (lut is not None) == (cbk == "fixed")        # the others: levels closer than 1/32 (or duplicates)
        for search, gsearch in ((0, 0), (1, 0), (0, 1), (2, 1), (2, 0)):
            tw.CFG.update(search=search, gsearch=gsearch)
            try:
                got = tw.quantize_w4a8_rotated_async(r, cb, order, tw.e4m3_overflow("cpu"), hw=False, sorted_levels=True,
                                                     lut=lut)
            finally:
                tw.CFG.update(search=1, gsearch=1)
            _same(got[:3], theirs[:3])
    assert float(amax) == float(r.float().abs().max())


def test_narrow_codebook_overflows_the_group_scales_as_torch_does(tw):
    """Group scales past e4m3's range (a codebook of small levels): torch's cast on this device decides the byte
    (0x7E saturated, or 0x7F NaN in older casts: then the grid is NaN and searchsorted puts every element at the last
    level); the kernel takes the device's answer and both cases give kitchen's bytes."""
    r = torch.randn(3, 64, generator=torch.Generator().manual_seed(3))
    cb = _codebook("narrow", None)
    theirs = ek._quantize_rotated_w4a8_int8_weight(r, 16, codebook_override=cb)
    over = tw.e4m3_overflow("cpu")
    assert over in (0x7E, 0x7F) and (theirs[1].view(torch.uint8) == over).any()
    p, sr, sc, _ = tw.quantize_w4a8_rotated_async(r, cb, tw.sum_order("cpu"), over, hw=False)
    _same((p, sr, sc), theirs[:3])
    # the other overflow byte: NaN scales and last-level codes where the cast saturates (what kitchen writes on a
    # torch whose cast gives NaN); emulated here from kitchen's own steps with the scales forced to 0x7F
    other = 0x7F if over == 0x7E else 0x7E
    p2, sr2, _, _ = tw.quantize_w4a8_rotated_async(r, cb, tw.sum_order("cpu"), other, hw=False)
    forced = theirs[1].view(torch.uint8).clone()
    forced[forced == over] = other
    gw = r.float().view(3, 4, 16)
    codes = ek._assign_grid(gw, ek._grid_levels(cb, forced.view(torch.float8_e4m3fn)), theirs[2])
    from comfy_kitchen.tensor.w4a8_packed import _pack_codes
    assert torch.equal(sr2.view(torch.uint8), forced) and torch.equal(p2, _pack_codes(codes.view(3, 64), 4))


def _kitchen_als_scales(r, cb):
    """kitchen's group scales after its two ALS passes, from its own helpers (the steps of
    _quantize_rotated_w4a8_int8_weight up to the scales)."""
    n, k = r.shape
    gw = r.float().view(n, k // 16, 16)
    gs = gw.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)
    q = ek._assign_codes(gw / gs, cb)
    for _ in range(2):
        lv = cb[q]
        gs = ((gw * lv).sum(-1, keepdim=True) / (lv * lv).sum(-1, keepdim=True).clamp(min=1e-8)).clamp(min=1e-8)
        q = ek._assign_codes(gw / gs, cb)
    return gs.squeeze(-1)


def test_als_scales_are_torchs_and_a_wrong_sum_order_is_caught(tw):
    """The ALS sums in torch's order give kitchen's group scales bit for bit; any other order differs on some groups
    (so the order matters, and the probe's choice is what makes the bytes equal)."""
    r = torch.randn(64, 256, generator=torch.Generator().manual_seed(5)) * 3
    cb = _codebook("fixed", None)
    ref = _kitchen_als_scales(r, cb)
    right, over = tw.sum_order("cpu"), tw.e4m3_overflow("cpu")
    for order in tw.ORDERS:
        gs = torch.empty(64, 16)
        p, sr, sc, _ = tw.quantize_w4a8_rotated_async(r, cb, order, over, hw=False, gs=gs)
        if order == right:
            assert torch.equal(gs, ref)
            _same((p, sr, sc), ek._quantize_rotated_w4a8_int8_weight(r, 16, codebook_override=cb)[:3])
        else:
            assert not torch.equal(gs, ref), order


@st.composite
def weights(draw):
    n = draw(st.integers(1, 12))
    k = draw(st.sampled_from([16, 48, 64, 80, 192, 256, 272, 512]))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["normal", "heavy", "zero_rows", "outliers"]))
    x = torch.randn(n, k, generator=g) * draw(st.sampled_from([1e-3, 0.05, 1.0, 50.0]))
    if kind == "heavy":          # heavy-tailed after rotation: the kurtosis gate fits a codebook
        x = x * torch.exp(2 * torch.randn(n, k, generator=g))
    elif kind == "zero_rows":
        x[::2] = 0
    elif kind == "outliers":
        x[torch.rand(n, k, generator=g) < 0.01] *= 1000
    return x.clamp(-6e4, 6e4).to(dtype)          # finite in fp16 too


@settings(max_examples=20, **SETTINGS)
@given(w=weights())
def test_whole_quantize_bytes_equal_kitchen_eager(tw, w):
    """The format's quantize (codebook + rotation in torch, the per-group part in the kernel) == kitchen's
    quantize_w4a8_int8_weight: packed codes, s_rel, s_channel and codebook."""
    g = convrot.group_for(w.shape[1])
    seam = _Seam(tw)
    q, sr, sc, cb = w4a8_int8.quantize_w4a8(w, g, backend=seam)
    assert seam.calls == 1
    kq, ksr, ksc, _corr, kcb = quantize_w4a8_int8_weight(w, 16, g)
    _same((q, sr, sc), (kq, ksr, ksc))
    assert torch.equal(cb, kcb)


def test_chunked_rows_one_launch_bytes_equal_kitchen_eager(tw, monkeypatch):
    """More rows than kitchen's chunk (2**22 elements): its rotation chunks, our one launch over them all (large
    tiles: the interpreter's cost is per tile)."""
    monkeypatch.setitem(tw.CFG, "bm", 32)
    monkeypatch.setitem(tw.CFG, "bk", 4096)
    w = (torch.randn(1100, 4096, generator=torch.Generator().manual_seed(11)) * 0.02).to(torch.bfloat16)
    seam = _Seam(tw)
    q, sr, sc, cb = w4a8_int8.quantize_w4a8(w, 256, backend=seam)
    kq, ksr, ksc, _corr, kcb = quantize_w4a8_int8_weight(w, 16, 256)
    _same((q, sr, sc), (kq, ksr, ksc))
    assert torch.equal(cb, kcb)


def test_non_finite_weight_raises_input_error_through_the_kernel_path(tw):
    """The kernel path has no finiteness pass of its own: the kernel's amax of the rotated weight finds inf/NaN, then
    the weight is checked (InputError); a finite weight is never refused."""
    from quant.errors import InputError
    from quant.kernels import triton_backend

    class Seam:
        def quantize_w4a8_rotated(self, r, codebook, *, name=None, check_finite="sync"):
            p, sr, sc, amax = tw.quantize_w4a8_rotated(r, codebook, hw=False)
            triton_backend._finite_or_raise(r, amax, name)
            return p, sr, sc

    for bad in (float("nan"), float("inf"), -float("inf")):
        w = torch.randn(8, 64)
        w[3, 17] = bad
        with pytest.raises(InputError, match="non-finite"):
            w4a8_int8.quantize_w4a8(w, 16, backend=Seam(), name="layer")
        p, sr, sc, amax = tw.quantize_w4a8_rotated(convrot.rotate(w, 16), torch.tensor(w4a8_int8.FIXED_CODEBOOK), hw=False)
        assert not torch.isfinite(amax)


def test_bucket_search_on_bucket_edges_and_outside_the_table(tw, monkeypatch):
    """search 2 (the bucket table): values on and next to every bucket start, on and next to every level, beyond
    +-1 and far beyond, in every assignment of the ALS -- kitchen's bytes; ineligible codebooks get no table."""
    cb = _codebook("fixed", None)
    lut = tw.bucket_table(cb)
    assert lut is not None and lut.tolist() == [int((cb < (j / 32 - 1)).sum()) for j in range(64)]
    assert tw.bucket_table(torch.linspace(-1, 1, 16) * 1.01) is None                   # a level beyond +-1
    assert tw.bucket_table(torch.sort(torch.cat([cb[:15], cb[14:15] + 0.01])).values) is None   # two levels too close
    edges = torch.cat([torch.arange(-40, 41) / 32, cb, torch.tensor([1.5, -1.5, 7.0, -30.0, 0.0])])
    edges = torch.cat([edges, torch.nextafter(edges, torch.tensor(2.0)), torch.nextafter(edges, torch.tensor(-2.0))])
    g = torch.Generator().manual_seed(9)
    n = 64
    r = edges[torch.randint(0, edges.numel(), (n, 256), generator=g)]
    r[:, ::16] = 1.0                                     # every group's amax 1: the first assignment sees the values
    r = r * torch.exp2(torch.randint(-3, 4, (n, 1), generator=g).float())
    monkeypatch.setitem(tw.CFG, "search", 2)
    theirs = ek._quantize_rotated_w4a8_int8_weight(r, 16, codebook_override=cb)
    got = tw.quantize_w4a8_rotated_async(r, cb, tw.sum_order("cpu"), tw.e4m3_overflow("cpu"), hw=False,
                                         sorted_levels=True, lut=lut)
    _same(got[:3], theirs[:3])
