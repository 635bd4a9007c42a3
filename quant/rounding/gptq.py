"""Hessian-aware rounding (GPTQ-style error feedback) on the NVFP4 and FP8 grids.

The layer's output error on calibration activations X is ||X (W_q - W)^T||^2 / M = sum_n e_n H e_n^T with
H = X^T X / M. GPTQ quantizes the input columns of W one after the other and, after each column, moves the
still-unquantized columns to absorb that column's error as well as H allows (the least-squares update
through the upper Cholesky factor U of H^-1):

    err = (w_j - q_j) / U_jj          W[:, j+1:] -= err * U[j, j+1:]

so an unconstrained weight can end up several grid steps from its round-to-nearest code. With ``bracket``
(the default) each code is kept to one of the two grid neighbours of the SOURCE weight (the choice learned
rounding, learned.py, makes): the error feedback decides which, and every row stays inside the per-row error
bound of ``verify --source`` (an unconstrained GPTQ file fails it: rows far beyond one grid step look like
swapped or zeroed rows). Updates are applied lazily in column batches of ``batch`` (the
usual GPTQ schedule: the same result, fewer passes over W). Layers of the same shape run as one batch
(every op carries a leading layer dimension), so a GPU pays the column loop once per batch, not per layer.

On a GPU the column loop is bound by kernel launches, not arithmetic (one real-size A14B block: ~24k columns),
so a column costs 8 tensor ops: with the bracket the code is one of two known values, picked by ONE comparison
with a threshold precomputed per block / column batch (:func:`_threshold`: the two neighbours' midpoint, the
tie decided by the grid's own rounding -- the same values as clamp(round-to-nearest, lo, hi)), and each NVFP4
block's scale candidates are scored in one pass. (Before: NVFP4 32.2, FP8 13.3 ops a column.)

``damp`` adds ``damp * mean(diag H)`` to H's diagonal before the factorisation: a share of plain weight
error in the objective. GPTQ's 1 % only stabilises the Cholesky; larger values trade output error on the
calibration rows for weight error (measured in benchmarks/fidelity_levers.py on the trained tiny model, codes
bracketed: damp 0.1 gave the best held-out output SQNR, NVFP4 31.16 dB vs 30.98 at 0.01 and 30.53 at 1.0).

Grids (the file stays standard: every value is a valid code under the format's own scales):
  * FP8: the per-tensor scale amax(W)/448 of the source weight (as RTN), codes e4m3fn (RNE, clamp +-448).
  * NVFP4: the global scale amax/2688 (as RTN); each 16-column block's e4m3 scale is chosen when the
    quantizer reaches the block, from the block's columns as updated so far: amax/6 (RTN's rule,
    ``scale_search=None``), or the scale search of scale_search.py over RTN's code + ``OFFSETS``
    (``"mse"``: the block's weight error; ``"output"``: e^T H_bb e with the block's 16x16 part of H).

Columns no activation reaches (H_jj = 0) are rounded to nearest and pass no error on.
Plain torch, CPU and CUDA; float32 (the Cholesky in float64 on a CPU).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels import fp8 as _fp8
from ..kernels import nvfp4 as _nv
from . import scale_search as _ss

BLOCK = _nv.BLOCK


@dataclass(frozen=True)
class GptqConfig:
    damp: float = 0.1                   # H += damp * mean(diag H) * I (measured: benchmarks/results/cpu-fidelity-levers-bracket-*.json)
    batch: int = 128                    # lazy-update column batch (a multiple of 16)
    scale_search: str | None = "output"  # NVFP4 block scales: None (amax/6, RTN's), "mse" or "output"
    samples: int = 4096                 # calibration rows kept per layer
    seed: int = 0
    bracket: bool = True                # each code one of the two grid neighbours of the SOURCE weight


def upper_inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """U [L, K, K]: the upper Cholesky factor of (H + damp*mean(diag H)*I)^-1 per layer (``h`` [L, K, K]).
    Columns with H_jj = 0 get an isolated unit diagonal first (they pass no error on)."""
    dt = torch.float64 if h.device.type == "cpu" else torch.float32
    h = h.to(dt).clone()
    diag = torch.diagonal(h, dim1=-2, dim2=-1)
    dead = diag <= 0
    if bool(dead.any()):
        keep = (~dead).to(dt)
        h = h * keep.unsqueeze(-1) * keep.unsqueeze(-2)
        torch.diagonal(h, dim1=-2, dim2=-1).add_(dead.to(dt))
    d = torch.diagonal(h, dim1=-2, dim2=-1).mean(-1)                      # [L]
    d = torch.where(d > 0, d, torch.ones_like(d))
    eye = torch.eye(h.shape[-1], dtype=dt, device=h.device)
    h = h + (damp * d)[:, None, None] * eye
    for _ in range(8):
        lo, info = torch.linalg.cholesky_ex(h)
        if not bool((info != 0).any()):
            break
        h = h + (max(damp, 1e-3) * d)[:, None, None] * eye     # not positive definite (tiny sample): more ridge
    hinv = torch.cholesky_inverse(lo)
    return torch.linalg.cholesky(hinv, upper=True).to(torch.float32)


def _block_codes(blk: torch.Tensor, s2: torch.Tensor, hb: torch.Tensor | None, search: str | None):
    """e4m3 block-scale codes [L, N] for blocks ``blk`` [L, N, 16] at global scales ``s2`` [L]: RTN's code, or
    the least-error code among RTN's + OFFSETS (``hb`` [L, 16, 16]: output metric, else the weight error).
    Every candidate code is scored in one pass (a leading candidate dimension: a handful of kernels per block
    instead of a handful per candidate); ties keep the earlier candidate, RTN's code first."""
    s2b = s2[:, None]
    amax = blk.abs().amax(-1)
    c0 = torch.clamp(amax / 6.0 / s2b, max=_nv.FP8_MAX).to(torch.float8_e4m3fn).view(torch.uint8).to(torch.int16)
    if search is None:
        return c0.to(torch.uint8)
    offs = torch.tensor([0] + [d for d in _ss.OFFSETS if d != 0], dtype=torch.int16, device=blk.device)
    cand = c0.unsqueeze(0) + offs[:, None, None]                                       # [O, L, N]
    cand[1:] = cand[1:].clamp(1, _ss.E4M3_TOP)
    t = cand.to(torch.uint8).view(torch.float8_e4m3fn).float() * s2b
    ok = t > 0
    tt = torch.where(ok, t, torch.ones_like(t)).unsqueeze(-1)
    e = _ss._e2m1_round(blk / tt) * tt - blk                                            # [O, L, N, 16]
    v = (torch.matmul(e, hb) * e).sum(-1) if hb is not None else (e * e).sum(-1)         # [O, L, N]
    v[1:] = torch.where(ok[1:] & (c0 > 0), v[1:], torch.full_like(v[1:], float("inf")))
    best = torch.argmin(v, dim=0, keepdim=True)                                         # the first least error
    return cand.gather(0, best).squeeze(0).to(torch.uint8)


def _bounds(t0: torch.Tensor, neighbours) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high): the grid neighbours of the source's scaled values ``t0``, signed, low <= high."""
    lo, hi = neighbours(t0.abs())
    sign = torch.where(torch.signbit(t0), -1.0, 1.0)
    a, b = sign * lo, sign * hi
    return torch.minimum(a, b), torch.maximum(a, b)


def _threshold(lo: torch.Tensor, hi: torch.Tensor, rtn) -> torch.Tensor:
    """``thr`` with ``where(v > thr, hi, lo) == clamp(rtn(v), lo, hi)`` for every float32 ``v``: ``lo``, ``hi`` are
    neighbouring grid values (or equal), ``rtn`` the grid's round-to-nearest (monotone; its decision boundary
    between two neighbours is their midpoint, exact in float32 on both grids). At the midpoint itself ``rtn``
    decides the tie (even code): up -> the threshold is the float just below the midpoint."""
    mid = (lo + hi) * 0.5
    return torch.where(rtn(mid) == hi, torch.nextafter(mid, torch.full_like(mid, -float("inf"))), mid)


def _fp8_rtn(v: torch.Tensor) -> torch.Tensor:
    return v.clamp(-_fp8.FP8_MAX, _fp8.FP8_MAX).to(_fp8.FP8_DTYPE).float()


class _Fp8Grid:
    """e4m3fn codes under RTN's per-tensor scale amax/448 (fp32 division, RNE, clamp +-448)."""

    def __init__(self, w: torch.Tensor, cfg: GptqConfig):
        self.n, self.k = w.shape[1], w.shape[2]
        self.scale = torch.stack([_fp8.weight_scale(w[i]) for i in range(w.shape[0])]).to(w.device)   # [L]
        self.sc = self.scale[:, None]
        self.bracket = cfg.bracket
        self.x0 = self.lo = self.hi = self.thr = None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        self.x0 = x
        return x.clone()

    def begin(self, i1: int, i2: int) -> None:
        """A column batch starts: its columns' bracket (the source's grid neighbours) and decision thresholds."""
        if self.bracket:
            from .learned import fp8_neighbours
            t0 = (self.x0[:, :, i1:i2] / self.scale[:, None, None]).clamp(-_fp8.FP8_MAX, _fp8.FP8_MAX)
            self.lo, self.hi = _bounds(t0, fp8_neighbours)
            self.thr = _threshold(self.lo, self.hi, _fp8_rtn)

    def column(self, w1: torch.Tensor, j: int, c: int, h: torch.Tensor, out: torch.Tensor) -> None:
        """Column ``j`` of the batch (``c`` in the layer) -> its dequantized values, written into ``out``."""
        v = w1[:, :, j] / self.sc
        q = torch.where(v > self.thr[:, :, j], self.hi[:, :, j], self.lo[:, :, j]) if self.bracket else _fp8_rtn(v)
        torch.mul(q, self.sc, out=out)

    def tensors(self, q: torch.Tensor, i: int) -> tuple:
        return (q[i] / self.scale[i]).to(_fp8.FP8_DTYPE), self.scale[i].reshape(())


class _Nvfp4Grid:
    """E2M1 codes under RTN's global scale amax/2688; each 16-column block's e4m3 scale is chosen when the
    quantizer reaches the block (``cfg.scale_search``: None = amax/6, "mse", "output")."""

    def __init__(self, w: torch.Tensor, cfg: GptqConfig):
        if cfg.scale_search not in (None, "mse", "output"):
            raise ValueError(f"unknown scale search {cfg.scale_search!r}")
        nl, n, k = w.shape
        self.n, self.k = _nv.rup(n, 16), _nv.rup(k, 16)
        self.search = cfg.scale_search
        self.s2 = torch.stack([_nv.global_scale(w[i]) for i in range(nl)]).to(w.device)           # [L]
        self.codes = torch.zeros((nl, self.n, self.k // BLOCK), dtype=torch.uint8, device=w.device)
        self.total = self.safe = self.lo = self.hi = self.thr = None
        self.bracket = cfg.bracket
        self.x0 = None

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        n, k = x.shape[1], x.shape[2]
        self.x0 = torch.nn.functional.pad(x, (0, self.k - k, 0, self.n - n)) if (self.n, self.k) != (n, k) else x
        return self.x0.clone()

    def begin(self, i1: int, i2: int) -> None:
        pass                                        # block scales are chosen block by block (column)

    def column(self, w1: torch.Tensor, j: int, c: int, h: torch.Tensor, out: torch.Tensor) -> None:
        if c % BLOCK == 0:                          # a new block: its scale from the columns as updated so far
            hb = h[:, c:c + BLOCK, c:c + BLOCK] if self.search == "output" else None
            cb = _block_codes(w1[:, :, j:j + BLOCK], self.s2, hb, self.search)              # [L, N]
            self.codes[:, :, c // BLOCK] = cb
            self.total = cb.view(torch.float8_e4m3fn).float() * self.s2[:, None]
            self.safe = torch.where(self.total > 0, self.total, torch.ones_like(self.total))
            if self.bracket:                        # the block's 16 columns' bounds under its chosen scale
                from .learned import e2m1_neighbours
                t0 = (self.x0[:, :, c:c + BLOCK] / self.safe.unsqueeze(-1)).clamp(-_nv.FP4_MAX, _nv.FP4_MAX)
                self.lo, self.hi = _bounds(t0, e2m1_neighbours)
                self.thr = _threshold(self.lo, self.hi, _ss._e2m1_round)
        v = w1[:, :, j] / self.safe
        b = c % BLOCK
        q = torch.where(v > self.thr[:, :, b], self.hi[:, :, b], self.lo[:, :, b]) if self.bracket else _ss._e2m1_round(v)
        torch.mul(q, self.total, out=out)

    def tensors(self, q: torch.Tensor, i: int) -> tuple:
        packed, bs = _ss.encode_with_codes(q[i].view(self.n, self.k // BLOCK, BLOCK), self.codes[i],
                                           self.s2[i].reshape(()))
        return packed, _nv.swizzle(bs), self.s2[i].reshape(())


GRIDS = {"fp8": _Fp8Grid, "nvfp4": _Nvfp4Grid}


def quantize_batch(action: str, w: torch.Tensor, h: torch.Tensor, cfg: GptqConfig = GptqConfig()) -> list[tuple]:
    """GPTQ a batch of same-shape layers: ``w`` [L, N, K] (any float dtype), ``h`` [L, K, K] their input Gram
    matrices. Returns per layer the kernel's tensors: fp8 (q e4m3fn [N, K], scale 0-d); nvfp4 (packed U8,
    swizzled e4m3 block scales, s2 0-d)."""
    if w.dim() != 3 or h.dim() != 3 or h.shape[0] != w.shape[0] or h.shape[-1] != h.shape[-2]:
        raise ValueError(f"GPTQ takes w [L, N, K] and h [L, K, K], got {list(w.shape)} and {list(h.shape)}")
    if action not in GRIDS:
        raise ValueError(f"GPTQ rounds to {' or '.join(GRIDS)}, not {action!r}")
    grid = GRIDS[action](w, cfg)
    x = grid.pad(w.to(torch.float32))
    kp = x.shape[-1]
    h = h.to(device=w.device, dtype=torch.float32)
    if h.shape[-1] != kp:
        pad = kp - h.shape[-1]
        h = torch.nn.functional.pad(h, (0, pad, 0, pad))
    u = upper_inverse_factor(h, cfg.damp).to(w.device)
    q = torch.empty_like(x)                                  # dequantized result
    bsz = max(BLOCK, cfg.batch // BLOCK * BLOCK)
    for i1 in range(0, kp, bsz):
        i2 = min(i1 + bsz, kp)
        grid.begin(i1, i2)
        w1 = x[:, :, i1:i2].clone()
        e1 = torch.empty_like(w1)
        u1 = u[:, i1:i2, i1:i2]
        d1 = torch.diagonal(u1, dim1=-2, dim2=-1).unsqueeze(1)   # [L, 1, B]: U_jj
        for j in range(i2 - i1):                             # 8 kernels a column (the GPU's cost is their launches)
            qc = q[:, :, i1 + j]
            grid.column(w1, j, i1 + j, h, qc)
            torch.div(w1[:, :, j] - qc, d1[:, :, j], out=e1[:, :, j])
            w1[:, :, j:].sub_(e1[:, :, j].unsqueeze(-1) * u1[:, j, j:].unsqueeze(1))
        if i2 < kp:
            x[:, :, i2:].sub_(torch.bmm(e1, u[:, i1:i2, i2:]))
    return [grid.tensors(q, i) for i in range(w.shape[0])]


def quantize(action: str, w: torch.Tensor, h: torch.Tensor, cfg: GptqConfig = GptqConfig()) -> tuple:
    """One layer: ``w`` [N, K], ``h`` [K, K] -> the kernel's tensors (see :func:`quantize_batch`)."""
    return quantize_batch(action, w.unsqueeze(0), h.unsqueeze(0), cfg)[0]
