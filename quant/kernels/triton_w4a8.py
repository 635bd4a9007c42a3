"""Triton kernel for W4A8 (ComfyUI ``asym_w4a8_int8``): the per-group part of the quantizer, on the ConvRot-rotated
weight, bit for bit as comfy-kitchen 0.2.40's eager ``_quantize_rotated_w4a8_int8_weight`` computes it on the same
device (4 bits, symmetric, codebook, e4m3 group scales, group 16, no stochastic rounding).

What the reference computes per group of 16 (``x``: the rotated weight in fp32, ``cb``: the 16 sorted levels):

* ``gs = max(amax|x|, 1e-8)``; ``q = nearest(x / gs)`` (searchsorted + neighbour compare, ties to the lower index);
* twice (ALS): ``l = cb[q]``; ``gs = max(sum(x*l) / max(sum(l*l), 1e-8), 1e-8)``; ``q = nearest(x / gs)``;
* per row: ``s_channel = max(max_g max_j |cb[q] * gs| / 127, 1e-8)`` (on CUDA torch multiplies by fp32(1/127));
* ``s_rel = e4m3(gs / s_channel)`` (torch's cast: round-to-nearest-even; above 464 either 448 (0x7E: torch 2.14
  saturates) or NaN (0x7F: older c10 casts) -- :func:`e4m3_overflow` asks torch on the device); the group's int8 grid ``clamp(round(cb * s_rel), -127, 127)``; each element the nearest grid level
  of ``x / s_channel`` (searchsorted on the grid, ties to the lower index); codes packed even column low.

Every step is an elementwise IEEE fp32 operation (divisions ``div_rn``), an exact max, or a comparison count --
except the two ALS sums of 16 products, whose fp32 result depends on the order of the additions. Those are added
here in an explicit order: the one torch's own ``sum(-1)`` uses on the device, found once per device by
:func:`sum_order` (torch's reduction of a contiguous last dim of 16 on CUDA is a warp-shuffle tree over adjacent
pairs; on an AVX2/AVX512 CPU build a fold of the two 8-lane halves then a sequential sum), checked against torch on
probe tensors; where no candidate matches, :func:`sum_order` says None and the caller keeps the torch path.

OPT-IN (never run on a GPU yet): quant.formats.w4a8_int8 uses it only with QUANTGATE_W4A8_TRITON=1 (or
``w4a8_int8.TRITON = True``); its default on CUDA is the torch ops tested on an H100 in session 3. Inside the kernel,
CFG search=2 and fastdiv=1 are further opt-ins (QUANTGATE_W4A8_CFG).

The rotation itself stays torch's (cuBLAS: the same call shapes as kitchen's chunked reference), as does the
codebook decision (a seeded sample, a kurtosis gate, a Lloyd fit where the gate trips).
"""
from __future__ import annotations

import torch

from .triton_quant import _KIND, _check, _e4m3_rne, _from_e4m3, _hw, _pow2, triton, tl

GROUP = 16
LEVELS = 16
# the explicit summation orders of 16 values a kernel can take (constexpr ORDER)
ORDERS = {0: "pairwise tree over adjacent pairs (CUDA warp shuffles, offsets 1, 2, 4, 8)",
          1: "x[l] + x[l+8] per lane, then lanes 0..7 in sequence (CPU, 8-lane vectors)",
          2: "x[0..15] in sequence",
          3: "pairwise tree over halves (x[l] + x[l+8], then + 4, + 2, + 1)"}
CFG = {"bm": 4, "bk": 256, "warps": 4, "search": 1, "gsearch": 1, "fastdiv": 0}      # launch shape (any gives the same bytes); QUANTGATE_W4A8_CFG="bm=8,bk=128"
# search / gsearch: searchsorted on the codebook / on a group's int8 grid: 0 = 16 comparisons (the grid's 16 levels
# computed once a group), 1 = a 5-step bisection (each step gathers a level; sorted levels, the same answer),
# 2 (codebook only, levels in [-1, 1] >= 1/32 apart: the fixed table) = a bucket table and three comparisons;
# fastdiv: 1 = x / d from d's correctly rounded reciprocal and one FMA correction (Markstein: exact where nothing
# under/overflows -- a tile takes it only when all its values are in the range where that holds; GPU only)
for _kv in filter(None, __import__("os").environ.get("QUANTGATE_W4A8_CFG", "").split(",")):
    _k, _v = _kv.split("=")
    if _k.strip() not in CFG:
        raise ValueError(f"QUANTGATE_W4A8_CFG: unknown key {_k!r}")
    CFG[_k.strip()] = int(_v)
_INV127 = float(torch.tensor(1.0) / torch.tensor(127.0))    # torch's fp32 reciprocal of the Python divisor 127.0


def _order_candidates(v: torch.Tensor) -> dict[int, torch.Tensor]:
    """The sums of the last dim (16) of ``v`` in each explicit order, with torch elementwise adds (exact IEEE)."""
    out = {}
    t = v
    while t.shape[-1] > 1:
        t = t[..., 0::2] + t[..., 1::2]
    out[0] = t[..., 0]
    p = v[..., :8] + v[..., 8:]
    acc = p[..., 0]
    for i in range(1, 8):
        acc = acc + p[..., i]
    out[1] = acc
    acc = v[..., 0]
    for i in range(1, 16):
        acc = acc + v[..., i]
    out[2] = acc
    t = v
    while t.shape[-1] > 1:
        h = t.shape[-1] // 2
        t = t[..., :h] + t[..., h:]
    out[3] = t[..., 0]
    return out


_ORDER: dict = {}


def sum_order(device) -> int | None:
    """The order (a key of :data:`ORDERS`) in which torch's ``sum(-1)`` adds a contiguous last dim of 16 fp32 values on
    ``device``, bit for bit on probe tensors of several shapes (mixed signs and magnitudes: any other order differs on
    them); None when none of the candidates matches. Probed once per device."""
    dev = torch.device(device)
    key = (dev.type, dev.index)
    if key in _ORDER:
        return _ORDER[key]
    g = torch.Generator().manual_seed(24)
    found = None
    for shape in ((1, 1), (3, 7), (64, 1024)):
        v = torch.randn(*shape, GROUP, generator=g) * torch.exp(3 * torch.randn(*shape, GROUP, generator=g))
        v = v.to(dev)
        ref = v.sum(-1, keepdim=True)[..., 0].cpu()
        ok = {o for o, s in _order_candidates(v).items() if torch.equal(s.cpu().view(torch.int32), ref.view(torch.int32))}
        found = ok if found is None else found & ok
    _ORDER[key] = min(found) if found else None
    return _ORDER[key]


_OVER: dict = {}


def e4m3_overflow(device) -> int | None:
    """The e4m3fn byte torch's cast writes for a positive fp32 value past the largest finite e4m3 (448, rounding
    up from above 464): 0x7E (saturation) or 0x7F (NaN); None if torch does neither on ``device`` (or rounds the
    probes near the top differently from round-to-nearest-even)."""
    dev = torch.device(device)
    key = (dev.type, dev.index)
    if key not in _OVER:
        probe = torch.tensor([464.5, 479.0, 480.0, 1e6, 3e38, 464.0, 460.0, 0.0009765625, 0.00146484375], device=dev)
        b = probe.to(torch.float8_e4m3fn).view(torch.uint8).cpu().tolist()
        top = set(b[:5])
        _OVER[key] = top.pop() if len(top) == 1 and b[5:] == [0x7E, 0x7E, 0, 1] and b[0] in (0x7E, 0x7F) else None
    return _OVER[key]


if triton is not None:
    @triton.jit
    def _sum16(v, BG: tl.constexpr, ORDER: tl.constexpr):
        """[BG, 16] fp32 -> [BG]: the 16 values of each row added in the order ORDER (see ORDERS)."""
        if ORDER == 0:
            a, b = tl.split(tl.reshape(v, (BG, 8, 2)))
            a, b = tl.split(tl.reshape(a + b, (BG, 4, 2)))
            a, b = tl.split(tl.reshape(a + b, (BG, 2, 2)))
            a, b = tl.split(a + b)
            return a + b
        elif ORDER == 3:
            a, b = tl.split(tl.permute(tl.reshape(v, (BG, 2, 8)), (0, 2, 1)))
            a, b = tl.split(tl.permute(tl.reshape(a + b, (BG, 2, 4)), (0, 2, 1)))
            a, b = tl.split(tl.permute(tl.reshape(a + b, (BG, 2, 2)), (0, 2, 1)))
            a, b = tl.split(a + b)
            return a + b
        else:
            if ORDER == 1:
                a, b = tl.split(tl.permute(tl.reshape(v, (BG, 2, 8)), (0, 2, 1)))
                p = a + b                                                    # [BG, 8]: lane l = x[l] + x[l+8]
                e, o = tl.split(tl.reshape(p, (BG, 4, 2)))                    # lanes 0,2,4,6 / 1,3,5,7
                ee, eo = tl.split(tl.reshape(e, (BG, 2, 2)))                  # 0,4 / 2,6
                oe, oo = tl.split(tl.reshape(o, (BG, 2, 2)))                  # 1,5 / 3,7
                p0, p4 = tl.split(ee)
                p2, p6 = tl.split(eo)
                p1, p5 = tl.split(oe)
                p3, p7 = tl.split(oo)
                return ((((((p0 + p1) + p2) + p3) + p4) + p5) + p6) + p7
            else:
                a, b = tl.split(tl.reshape(v, (BG, 8, 2)))                    # evens / odds
                a0, a1 = tl.split(tl.reshape(a, (BG, 4, 2)))                  # 0,4,8,12 / 2,6,10,14
                b0, b1 = tl.split(tl.reshape(b, (BG, 4, 2)))                  # 1,5,9,13 / 3,7,11,15
                c00, c01 = tl.split(tl.reshape(a0, (BG, 2, 2)))               # 0,8 / 4,12
                c10, c11 = tl.split(tl.reshape(a1, (BG, 2, 2)))               # 2,10 / 6,14
                d00, d01 = tl.split(tl.reshape(b0, (BG, 2, 2)))               # 1,9 / 5,13
                d10, d11 = tl.split(tl.reshape(b1, (BG, 2, 2)))               # 3,11 / 7,15
                x0, x8 = tl.split(c00)
                x4, x12 = tl.split(c01)
                x2, x10 = tl.split(c10)
                x6, x14 = tl.split(c11)
                x1, x9 = tl.split(d00)
                x5, x13 = tl.split(d01)
                x3, x11 = tl.split(d10)
                x7, x15 = tl.split(d11)
                s = (((((((x0 + x1) + x2) + x3) + x4) + x5) + x6) + x7)
                return (((((((s + x8) + x9) + x10) + x11) + x12) + x13) + x14) + x15

    @triton.jit
    def _level(cb_ptr, i, s, GRID: tl.constexpr):
        """Level i of the codebook (GRID False) or of the group's int8 grid for scale s (GRID True)."""
        if GRID:
            return _grid_level(tl.load(cb_ptr + i), s)
        else:
            return tl.load(cb_ptr + i)

    @triton.jit
    def _below(cb_ptr, i, s, v, GRID: tl.constexpr):
        """1 where level i is below v in torch.searchsorted's sense (not >= v: a NaN level counts as below), else 0."""
        return 1 - (_level(cb_ptr, i, s, GRID) >= v).to(tl.int32)

    @triton.jit
    def _lower_bound(v, cb_ptr, s, GRID: tl.constexpr, SORTED: tl.constexpr, SEARCH: tl.constexpr, lut_ptr):
        """torch.searchsorted(levels, v) (side left). SORTED: the count of levels below v -- 16 comparisons (SEARCH 0)
        or a branchless bisection (SEARCH 1: steps 8, 4, 2, 1 and the last level; the same count on sorted levels,
        all-NaN levels included); else torch's binary search itself (its answer on unsorted levels)."""
        if SORTED:
            if SEARCH == 2:     # codebook only: a bucket of 1/32 over [-1, 1) gives t = count(levels < its start);
                # levels >= 1/32 apart and the bucket within one of v's: the count is t - 1 plus levels t-1, t, t+1
                jf = tl.minimum(tl.maximum((v + 1.0) * 32.0, 0.0), 63.0)
                t = tl.load(lut_ptr + jf.to(tl.int32))
                pos = tl.maximum(t - 1, 0)
                pos += tl.where(t >= 1, _below(cb_ptr, tl.maximum(t - 1, 0), s, v, GRID), 0)
                pos += tl.where(t <= 15, _below(cb_ptr, tl.minimum(t, 15), s, v, GRID), 0)
                pos += tl.where(t <= 14, _below(cb_ptr, tl.minimum(t + 1, 15), s, v, GRID), 0)
            elif SEARCH == 1:
                pos = _below(cb_ptr, 7, s, v, GRID) * 8
                pos += _below(cb_ptr, pos + 3, s, v, GRID) * 4
                pos += _below(cb_ptr, pos + 1, s, v, GRID) * 2
                pos += _below(cb_ptr, pos, s, v, GRID)
                pos += tl.where(pos == 15, _below(cb_ptr, 15, s, v, GRID), 0)
            else:
                pos = tl.zeros(v.shape, dtype=tl.int32)
                for i in tl.static_range(16):
                    pos += _below(cb_ptr, i, s, v, GRID)
        else:
            pos = tl.zeros(v.shape, dtype=tl.int32)
            end = tl.full(v.shape, 16, tl.int32)
            for _ in tl.static_range(5):
                mid = pos + ((end - pos) >> 1)
                right = _below(cb_ptr, tl.minimum(mid, 15), s, v, GRID) == 1
                live = pos < end
                pos = tl.where(live & right, mid + 1, pos)
                end = tl.where(live & (right == 0), mid, end)
        return pos

    @triton.jit
    def _div(x, d, FAST: tl.constexpr):
        """x [BG, 16] / d [BG] (d > 0), IEEE round-to-nearest. FAST: q = x * RN(1/d), r = x - d q (exact, FMA),
        q + r RN(1/d) rounded once -- correctly rounded when no value under/overflows (Markstein); the tile takes it
        only if every divisor is in [2^-60, 2^60] and every x is 0 or within 2^+-60 of its divisor and above 2^-90."""
        if FAST:
            ad = d[:, None]
            ax = tl.abs(x)
            ok = ((ad >= 8.673617379884035e-19) & (ad <= 1.152921504606847e+18)
                  & ((x == 0.0) | ((ax >= ad * 8.673617379884035e-19) & (ax <= ad * 1.152921504606847e+18)
                                   & (ax >= 8.077935669463161e-28))))
            if tl.min(tl.min(ok.to(tl.int32), axis=1), axis=0) == 1:
                rd = tl.math.div_rn(1.0, d)[:, None]
                q = x * rd
                r = tl.fma(-ad, q, x)
                res = tl.fma(r, rd, q)
            else:
                res = tl.math.div_rn(x, ad)
        else:
            res = tl.math.div_rn(x, d[:, None])
        return res

    @triton.jit
    def _nearest(v, cb_ptr, s, GRID: tl.constexpr, SORTED: tl.constexpr, SEARCH: tl.constexpr, lut_ptr):
        """Index of the nearest level (searchsorted, then the closer of the two neighbours; ties to the lower index),
        as int32: kitchen's _assign_codes (GRID False) and _assign_grid (GRID True)."""
        pos = _lower_bound(v, cb_ptr, s, GRID, SORTED, SEARCH, lut_ptr)
        lo = tl.maximum(pos - 1, 0)
        hi = tl.minimum(pos, 15)
        dlo = tl.abs(v - _level(cb_ptr, lo, s, GRID))
        dhi = tl.abs(v - _level(cb_ptr, hi, s, GRID))
        return tl.where(dhi < dlo, hi, lo)

    @triton.jit
    def _grid_level(c, s):
        """clamp(round(c * s), -127, 127) with torch's NaN propagation (a NaN scale gives NaN levels)."""
        r = (c * s + 12582912.0) - 12582912.0          # round half to even (|c * s| <= 448 < 2**22)
        return tl.where(r == r, tl.minimum(tl.maximum(r, -127.0), 127.0), r)

    @triton.jit
    def _load_groups(x_ptr, base, cols, m, BG: tl.constexpr, KIND: tl.constexpr, HW: tl.constexpr):
        if KIND == 1 and not HW:        # the interpreter flushes bf16 subnormals: widen the bits (exact)
            b = tl.load(x_ptr.to(tl.pointer_type(tl.int16)) + base + cols[None, :], mask=m, other=0)
            x = (b.to(tl.int32) << 16).to(tl.float32, bitcast=True)
        else:
            x = tl.load(x_ptr + base + cols[None, :], mask=m, other=0.0).to(tl.float32)
        return tl.reshape(x, (BG, 16))

    @triton.jit
    def _w4a8_kernel(x_ptr, cb_ptr, lut_ptr, p_ptr, sr_ptr, sc_ptr, gs_ptr, amax_ptr, N, K, G,
                     BM: tl.constexpr, BK: tl.constexpr, HW: tl.constexpr, INV127: tl.constexpr,
                     ORDER: tl.constexpr, OVER: tl.constexpr, KIND: tl.constexpr, SORTED: tl.constexpr,
                     SEARCH: tl.constexpr, GSEARCH: tl.constexpr, FASTDIV: tl.constexpr):
        """BM rows: pass 1 finds every group's ALS scale (kept in gs_ptr, [N, G] fp32) and the row's largest
        |level * scale|; pass 2 writes the e4m3 group scales and the 4-bit codes against the group's int8 grid."""
        BG: tl.constexpr = BM * BK // 16
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        rm = rows < N
        base = rows.to(tl.int64)[:, None] * K
        gbase = rows.to(tl.int64)[:, None] * G
        rowmax = tl.zeros((BM,), dtype=tl.float32)
        xmax = tl.zeros((BM,), dtype=tl.float32)
        bad = tl.zeros((BM,), dtype=tl.float32)
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            m = rm[:, None] & (cols < K)[None, :]
            x = _load_groups(x_ptr, base, cols, m, BG, KIND, HW)
            ax = tl.abs(x)
            xa = tl.reshape(ax, (BM, BK))
            xmax = tl.maximum(xmax, tl.max(xa, axis=1))
            bad += tl.sum(tl.where(xa < float("inf"), 0.0, 1.0), axis=1)
            gs = tl.maximum(tl.max(ax, axis=1), 1e-8)
            q = _nearest(_div(x, gs, FASTDIV), cb_ptr, 1.0, False, SORTED, SEARCH, lut_ptr)
            for _ in tl.static_range(2):
                lv = tl.load(cb_ptr + q)
                num = _sum16(x * lv, BG, ORDER)
                den = tl.maximum(_sum16(lv * lv, BG, ORDER), 1e-8)
                gs = tl.maximum(tl.math.div_rn(num, den), 1e-8)
                q = _nearest(_div(x, gs, FASTDIV), cb_ptr, 1.0, False, SORTED, SEARCH, lut_ptr)
            mg = tl.max(tl.abs(tl.load(cb_ptr + q)), axis=1) * gs           # max_j |cb[q_j] * gs| (rounding is monotone)
            gcols = k0 // 16 + tl.arange(0, BK // 16)
            gm = rm[:, None] & (gcols < G)[None, :]
            mg2 = tl.where(gm, tl.reshape(mg, (BM, BK // 16)), 0.0)
            rowmax = tl.maximum(rowmax, tl.max(mg2, axis=1))
            tl.store(gs_ptr + gbase + gcols[None, :], tl.reshape(gs, (BM, BK // 16)), mask=gm)
        if HW:      # torch on CUDA divides by the Python scalar 127.0 as a multiply by fp32(1/127); the CPU divides
            sc = tl.maximum(rowmax * INV127, 1e-8)
        else:
            sc = tl.maximum(tl.math.div_rn(rowmax, 127.0), 1e-8)
        tl.store(sc_ptr + rows, sc, mask=rm)
        tl.store(amax_ptr + rows, tl.where(bad > 0, float("nan"), xmax), mask=rm)
        scg = tl.reshape(tl.broadcast_to(sc[:, None], (BM, BK // 16)), (BG,))
        for k0 in range(0, K, BK):
            cols = k0 + tl.arange(0, BK)
            m = rm[:, None] & (cols < K)[None, :]
            x = _load_groups(x_ptr, base, cols, m, BG, KIND, HW)
            gcols = k0 // 16 + tl.arange(0, BK // 16)
            gm = rm[:, None] & (gcols < G)[None, :]
            gs = tl.reshape(tl.load(gs_ptr + gbase + gcols[None, :], mask=gm, other=1.0), (BG,))
            r = tl.math.div_rn(gs, scg)                                      # > 0
            code, _ = _e4m3_rne(tl.minimum(r, 480.0))                        # RNE; (464, 480] -> 0x7F
            code = tl.where(code >= 127, OVER, code)                         # torch's overflow byte: 0x7E or 0x7F
            val = tl.where(code == 127, float("nan"), _from_e4m3(code.to(tl.uint8), False))
            tl.store(sr_ptr + gbase + gcols[None, :], tl.reshape(code, (BM, BK // 16)).to(tl.uint8), mask=gm)
            t = _div(x, scg, FASTDIV)
            c = _nearest(t, cb_ptr, val[:, None], True, SORTED, GSEARCH, lut_ptr)
            even, odd = tl.split(tl.reshape(c, (BM, BK // 2, 2)))
            byte = ((even & 15) | ((odd & 15) << 4)).to(tl.int8)
            pc = k0 // 2 + tl.arange(0, BK // 2)
            tl.store(p_ptr + rows.to(tl.int64)[:, None] * (K // 2) + pc[None, :], byte,
                     mask=rm[:, None] & (pc < K // 2)[None, :])


def quantize_w4a8_rotated(r: torch.Tensor, codebook: torch.Tensor, hw: bool | None = None):
    """The kernel seam's op: (packed, s_rel, s_channel, amax) as :func:`quantize_w4a8_rotated_async`, or None where
    torch on ``r``'s device sums or casts in a way the kernel does not know (:func:`sum_order`,
    :func:`e4m3_overflow`). One small host sync: whether the codebook is sorted."""
    order, over = sum_order(r.device), e4m3_overflow(r.device)
    if order is None or over is None or r.dim() != 2 or r.shape[1] % GROUP or codebook.numel() != LEVELS:
        return None
    cb = codebook.to(device=r.device, dtype=torch.float32).contiguous()
    srt, lut = _levels_facts(cb)
    return quantize_w4a8_rotated_async(r, cb, order, over, hw=hw, sorted_levels=srt, lut=lut)


_LUTS: dict = {}


def bucket_table(cb_host: torch.Tensor) -> torch.Tensor | None:
    """For search 2: int32 [64], entry j = the count of levels below -1 + j/32; None unless the levels lie in [-1, 1]
    and are at least 1/32 apart (then a value's bucket, even one off, leaves its count among three levels)."""
    c = cb_host.double()
    if not bool(((c >= -1) & (c <= 1)).all()) or not bool((c[1:] - c[:-1] >= 1 / 32).all()):
        return None
    starts = torch.arange(64, dtype=torch.float64) / 32 - 1
    return (c[None, :] < starts[:, None]).sum(1).to(torch.int32)


def _levels_facts(cb: torch.Tensor):
    """(sorted?, bucket table on cb's device or None) of a codebook: one host copy of 16 floats, tables cached."""
    host = cb.detach().float().cpu()
    key = (tuple(host.tolist()), str(cb.device))
    if key not in _LUTS:
        srt = bool((host[1:] >= host[:-1]).all())
        t = bucket_table(host) if srt else None
        _LUTS[key] = (srt, None if t is None else t.to(cb.device))
        if len(_LUTS) > 64:
            _LUTS.pop(next(iter(_LUTS)))
    return _LUTS[key]


def quantize_w4a8_rotated_async(r: torch.Tensor, codebook: torch.Tensor, order: int, over: int = 0x7E,
                                hw: bool | None = None, gs: torch.Tensor | None = None, sorted_levels: bool = False,
                                lut: torch.Tensor | None = None):
    """The rotated weight ``r`` [N, K] (K % 16 == 0) and the sorted codebook [16] -> (packed int8 [N, K/2], s_rel
    float8_e4m3fn [N, K/16], s_channel float32 [N], amax float32 0-d: the largest |r|, NaN where r holds inf/NaN);
    one launch, nothing waits for the GPU. ``order``: :func:`sum_order` of the device, ``over``: its
    :func:`e4m3_overflow`; ``gs``: where to keep the ALS group scales (fp32 [N, K/16]; the tests read them);
    ``sorted_levels``: the caller knows the codebook is sorted (then each search is 16 comparisons, else torch's
    binary search step by step); ``lut``: its :func:`bucket_table` (CFG search 2 uses it where given)."""
    r = _check(r, 2)
    hw = _hw() if hw is None else hw
    n, k = r.shape
    if k % GROUP:
        raise ValueError(f"w4a8 groups are {GROUP} columns: K={k}")
    g = k // GROUP
    cb = codebook.to(device=r.device, dtype=torch.float32).contiguous()
    p = torch.empty((n, k // 2), dtype=torch.int8, device=r.device)
    sr = torch.empty((n, g), dtype=torch.float8_e4m3fn, device=r.device)
    sc = torch.empty((n,), dtype=torch.float32, device=r.device)
    if gs is None:
        gs = torch.empty((n, g), dtype=torch.float32, device=r.device)
    rows = torch.empty(max(n, 1), dtype=torch.float32, device=r.device)
    if n and k:
        bm, bk = CFG["bm"], min(CFG["bk"], _pow2(k))
        search = CFG["search"] if CFG["search"] != 2 or (lut is not None and sorted_levels) else 1
        _w4a8_kernel[(triton.cdiv(n, bm),)](r, cb, cb if lut is None else lut, p, sr.view(torch.uint8), sc, gs, rows, n, k, g, BM=bm, BK=bk,
                                            HW=hw, INV127=_INV127, ORDER=order, OVER=over, KIND=_KIND[r.dtype], SORTED=sorted_levels, SEARCH=search, GSEARCH=CFG["gsearch"],
                                            FASTDIV=CFG["fastdiv"] if hw else 0, num_warps=CFG["warps"],
                                            enable_fp_fusion=False)     # no mul+add -> fma: torch rounds each product
    else:
        rows.zero_()
    return p, sr, sc, rows[:n].amax() if n else rows[0]
