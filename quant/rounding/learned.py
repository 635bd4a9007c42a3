"""Learned rounding: choose, per weight, the grid point below or above it so that the layer's OUTPUT error
on calibration activations is small, instead of the nearest grid point (RTN).

Method (AdaRound's objective, SignRound's optimiser):
  * The grid is the one RTN picks: FP8 per-tensor scale amax/448; NVFP4 global scale amax/2688 and the
    e4m3 block scales exactly as RTN rounds them. Only the codes change, so every output value is on
    the format's grid and the companion tensors (scales) are byte-identical to RTN's.
  * For each weight w with scaled value t = w/scale, ``lo <= |t| <= hi`` are its two grid neighbours
    and ``f = (|t|-lo)/(hi-lo)``. A continuous offset V in [-0.5, 0.5] picks ``hi`` when f + V > 0.5
    (V = 0 is RTN).
  * Objective per output row n: ``e_n H e_n^T`` with e = dequant(W_q) - W and H = X^T X / M the input
    Gram matrix of the calibration activations X (= the squared output error ||X e^T||^2 / M).
    One matmul G = E H gives both the loss (sum(E*G)) and the gradient (2 G).
  * Sign-gradient descent on V with a straight-through estimator (SignRound): V -= lr_i * sign(G * step),
    lr decays linearly. Rows are independent given H, so the best candidate is kept PER ROW, starting
    from RTN: the result is never worse than RTN on the calibration set.
  * Early stop when the summed best loss improved by less than ``tol`` (relative) over ``patience`` iters.
  * Layers of the same shape run as one batch (torch.bmm); nothing here is random (the seed only picks
    calibration rows, see calibration.py), so a run is reproducible on a given device.

Everything is plain torch and runs on CPU and CUDA.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from ..kernels import fp8 as _fp8
from ..kernels import nvfp4 as _nv

E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


@dataclass(frozen=True)
class LearnedConfig:
    iters: int = 200           # most sign-gradient steps per batch
    lr: float | None = None    # first step size (None: 2/iters, the travel of V then sums to 1)
    patience: int = 25         # early stop window (iterations)
    tol: float = 1e-3          # relative improvement of the summed loss over `patience` iters that counts as progress
    damp: float = 0.01         # H += damp * mean(diag H) * I (conditioning of small samples)
    samples: int = 4096        # calibration rows kept per layer (bounded sample)
    seed: int = 0


@dataclass
class LayerResult:
    """Grid values in scaled units (``q * scale`` is the weight) for one layer, and its losses."""
    q: torch.Tensor            # [N, K] float32 grid values (signed)
    loss_rtn: float
    loss: float
    iters: int

    @property
    def gain_db(self) -> float:
        if self.loss <= 0:
            return 0.0 if self.loss_rtn <= 0 else float("inf")
        return 10 * math.log10(self.loss_rtn / self.loss) if self.loss_rtn > 0 else 0.0


# ---- the grid around each weight ----------------------------------------------------------------------
def fp8_neighbours(mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lo <= mag <= hi on the e4m3fn grid (mag >= 0, <= 448)."""
    qm = mag.to(torch.float8_e4m3fn)
    qf = qm.float()
    b = qm.view(torch.uint8).to(torch.int16)
    up = (b + 1).clamp(max=0x7E).to(torch.uint8).view(torch.float8_e4m3fn).float()
    dn = (b - 1).clamp(min=0).to(torch.uint8).view(torch.float8_e4m3fn).float()
    lo = torch.where(qf <= mag, qf, dn)
    hi = torch.where(qf >= mag, qf, up)
    return lo, hi


_GRIDS: dict = {}


def _grid(device) -> torch.Tensor:
    """E2M1_GRID on ``device``, made once (GPTQ asks per block: no host-to-device copy each time)."""
    g = _GRIDS.get(device)
    if g is None:
        g = _GRIDS[device] = torch.tensor(E2M1_GRID, dtype=torch.float32, device=device)
    return g


def e2m1_neighbours(mag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """lo <= mag <= hi on the E2M1 magnitude grid (mag in [0, 6])."""
    grid = _grid(mag.device)
    i = (torch.bucketize(mag, grid, right=True) - 1).clamp(0, len(E2M1_GRID) - 1)
    lo = grid[i]
    hi = torch.where(lo == mag, lo, grid[(i + 1).clamp(max=len(E2M1_GRID) - 1)])
    return lo, hi


# ---- per-layer RTN start and its grid (exactly the scales RTN writes) ---------------------------------
@dataclass
class Prepared:
    """RTN's quantization of one weight plus what the optimiser needs (all float32, [N, K] padded)."""
    action: str
    n: int
    k: int
    w: torch.Tensor            # source weight, float32 (NVFP4: padded to 16)
    scale: torch.Tensor        # fp8: 0-d; nvfp4: [Np, Kp/16] block scale * s2
    q_rtn: torch.Tensor        # RTN grid values (signed, scaled units)
    lo: torch.Tensor           # signed lower choice (sign(w) * lo)
    step: torch.Tensor         # signed step to the other choice (sign(w) * (hi - lo))
    frac: torch.Tensor         # position of |t| between lo and hi, in [0, 1]
    extra: tuple               # the RTN tensors to write besides the codes (fp8: scale; nvfp4: bs, s2)


@functools.lru_cache(maxsize=None)
def per_tensor(action: str) -> bool:
    """Whether layers of kernel family ``action`` have one scale per tensor (the fp8 grid) instead of per-block
    scales (the nvfp4 grid): asked of the format objects, not spelled out."""
    from ..formats import FORMATS
    return next(f for f in FORMATS.values() if f.kernel == action).block_scale_key is None


def prepare(action: str, weight: torch.Tensor, name: str | None = None, backend=None) -> Prepared:
    """RTN through ``backend`` (a kernel backend; default the eager reference) is the start and the grid."""
    if backend is None:
        from ..kernels import get_backend
        backend = get_backend(weight.device)
    n, k = weight.shape
    if per_tensor(action):
        q, s = backend.quantize_fp8(weight, name=name, check_finite="sync")
        w = weight.to(torch.float32)
        scale = s.to(torch.float32)
        t = (w / scale).clamp(-_fp8.FP8_MAX, _fp8.FP8_MAX)
        lo, hi = fp8_neighbours(t.abs())
        q_rtn = q.float()
        extra = (s,)
    else:
        packed, bs_sw, s2 = backend.quantize_nvfp4(weight, name=name)
        np_, kp = packed.shape[0], packed.shape[1] * 2
        w = weight.to(torch.float32)
        if (np_, kp) != (n, k):
            w = torch.nn.functional.pad(w, (0, kp - k, 0, np_ - n))
        bs = _nv.unswizzle(bs_sw, np_, kp // _nv.BLOCK).to(torch.float32)
        scale = bs * s2
        div = torch.where(scale == 0, torch.ones_like(scale), scale)
        t = (w.view(np_, -1, _nv.BLOCK) / div.unsqueeze(-1)).view(np_, kp)
        t = torch.where((scale == 0).repeat_interleave(_nv.BLOCK, 1), torch.zeros_like(t), t)
        t = t.clamp(-_nv.FP4_MAX, _nv.FP4_MAX)
        lo, hi = e2m1_neighbours(t.abs())
        q_rtn = _nv.e2m1_decode(_nv.unpack(packed), torch.float32).view(np_, kp)
        extra = (bs_sw, s2)
    sign = torch.where(torch.signbit(t), -1.0, 1.0)
    gap = hi - lo
    frac = torch.where(gap > 0, (t.abs() - lo) / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(gap))
    return Prepared(action, n, k, w, scale, q_rtn, sign * lo, sign * gap, frac, extra)


def dequant(action: str, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Grid values [.., N, K] times their scale (fp8: [.., 1, 1]; nvfp4: [.., N, K/16])."""
    if per_tensor(action):
        return q * scale
    sh = q.shape
    return (q.reshape(*sh[:-1], -1, _nv.BLOCK) * scale.unsqueeze(-1)).reshape(sh)


def encode(p: Prepared, q: torch.Tensor) -> tuple:
    """Grid values -> the layer's tensors in the kernel's return order (codes first, RTN's scales)."""
    if per_tensor(p.action):
        return (q.to(_fp8.FP8_DTYPE), p.extra[0])
    packed = _nv.pack(_nv.e2m1_encode(q))
    return (packed, p.extra[0], p.extra[1])


# ---- the optimiser: one batch of same-shape layers ---------------------------------------------------
def optimise(action: str, w: torch.Tensor, scale: torch.Tensor, q_rtn: torch.Tensor, lo: torch.Tensor,
             step: torch.Tensor, frac: torch.Tensor, h: torch.Tensor, cfg: LearnedConfig,
             on_iter=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Batched sign-gradient rounding. Shapes: w, q_rtn, lo, step, frac [B, N, K]; h [B, K, K];
    scale [B, 1, 1] (fp8) or [B, N, K/16] (nvfp4). Returns (best q, loss_rtn [B], loss [B], iters run)."""
    iters = max(0, int(cfg.iters))
    lr0 = cfg.lr if cfg.lr is not None else 2.0 / max(iters, 1)

    def loss_grad(q):
        e = dequant(action, q, scale) - w
        g = torch.bmm(e, h)
        return (g * e).sum(-1), g

    best_l, _ = loss_grad(q_rtn)
    loss_rtn = best_l.sum(-1)
    best = q_rtn.clone()
    thr = frac.neg().add_(0.5)            # pick the upper neighbour where V > 0.5 - f
    v = torch.zeros_like(frac)
    up = torch.empty(frac.shape, dtype=torch.bool, device=frac.device)
    hist = [float(loss_rtn.sum())]
    done = 0
    for i in range(iters):
        torch.gt(v, thr, out=up)
        q = torch.addcmul(lo, step, up)
        l, g = loss_grad(q)
        imp = l < best_l
        if q.is_cuda:
            best = torch.where(imp.unsqueeze(-1), q, best)
        else:                             # CPU where() is slow; copy only the improved rows
            best[imp] = q[imp]
        best_l = torch.minimum(l, best_l)
        g.mul_(step).sign_()
        v.sub_(g, alpha=lr0 * (1.0 - i / iters)).clamp_(-0.5, 0.5)
        del q, g, l
        done = i + 1
        if done % 5 == 0 or done == iters:
            tot = float(best_l.sum())
            hist.append(tot)
            if on_iter is not None:
                on_iter(done, float(loss_rtn.sum()), tot)
            w_ = max(1, cfg.patience // 5)
            if len(hist) > w_ and hist[-1 - w_] - tot <= cfg.tol * hist[-1 - w_]:
                break
    return best, loss_rtn, best_l.sum(-1), done


def gram(x: torch.Tensor, damp: float) -> torch.Tensor:
    """H = X^T X / M (float32) with a small ridge, for activations X [M, K]."""
    x = x.to(torch.float32)
    h = x.T @ x / max(1, x.shape[0])
    return _ridge(h, damp)


def weight_proxy(w: torch.Tensor, damp: float) -> torch.Tensor:
    """Data-free proxy of the input Gram matrix: the weight's own W^T W (the input directions the layer
    amplifies matter most; convert_to_quant's and Clybius' SVD objective uses the same subspace),
    normalised to mean diagonal 1, plus an identity share so no direction is ignored."""
    w = w.to(torch.float32)
    h = w.T @ w
    return _ridge(h, max(damp, 0.1))


def _ridge(h: torch.Tensor, damp: float) -> torch.Tensor:
    d = torch.diagonal(h).mean()
    d = torch.where(d > 0, d, torch.ones_like(d))
    h = h / d
    h.diagonal().add_(damp)
    return h
