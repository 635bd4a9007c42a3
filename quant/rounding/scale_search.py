"""NVFP4 scale search: choose each 16-element block's e4m3 scale (and the tensor's global scale) by the
error it causes instead of by amax/6.

Round-to-nearest (quant.kernels.nvfp4) sets a block's scale to e4m3(amax_block / 6 / s2): the largest
value lands exactly on the top E2M1 code 6 and the rest of the block on a grid whose coarse top (4 -> 6)
wastes resolution. A scale one to five e4m3 codes larger puts the largest value near 4 (the "4-vs-6"
choice: steps 0.5 up to 2 cover more of the block), a slightly smaller one clips the single largest value
a little and refines every other. The search tries the RTN code and its neighbours ``OFFSETS`` (in e4m3
code steps, i.e. 2^(1/8) apart inside an octave) and keeps, per block, the one with the least error:

* ``objective="mse"``: sum over the block of (W_q - W)^2 (the weight error: weight SQNR);
* ``objective="output"``: e_b^T H_bb e_b with H_bb the block's 16x16 part of the input Gram matrix
  H = X^T X / M of calibration activations (the layer's output error ||X e^T||^2 / M without the
  cross-block terms); with only per-channel second moments d = diag(H): sum d_k e_k^2.

Ties keep the RTN code, so with ``OFFSETS = (0,)`` the bytes are RTN's. The global scale
``weight_scale_2`` is searched over a few factors around amax/2688 (``global_factors``) with the block
search inside each; the tensor error decides. Every value written is a valid E2M1 code and a finite
positive e4m3 block scale: ComfyUI and comfy-kitchen decode it like any other file (decode =
code * block_scale * weight_scale_2).

Plain torch, CPU and CUDA.
"""
from __future__ import annotations

import torch

from ..kernels import nvfp4 as _nv

BLOCK = _nv.BLOCK
OFFSETS = (-2, -1, 0, 1, 2, 3, 4, 5)            # e4m3 code steps from the RTN code (5 steps ~ 6/4 = 2^0.585)
GLOBAL_FACTORS = tuple(2.0 ** (i / 32) for i in (0, 1, 2, 3))   # inside one e4m3 mantissa step (2^(1/8))
E4M3_TOP = 0x7E                                 # 448, the largest finite e4m3fn code


_TABLES: dict = {}


def _tables(device) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's E2M1 decision boundaries and grid values on ``device``, made once per device (GPTQ rounds
    one column at a time: a host-to-device copy per call would stall the stream every column)."""
    t = _TABLES.get(device)
    if t is None:
        t = _TABLES[device] = (_nv._boundaries(device),
                               torch.tensor(_nv.E2M1_VALUES, dtype=torch.float32, device=device))
    return t


def _e2m1_round(v: torch.Tensor) -> torch.Tensor:
    """Scaled values -> nearest E2M1 grid value (RNE ties, clamped to +-6), float32, sign kept: the value
    ``e2m1_decode(e2m1_encode(v))`` gives (the kernel's boundaries), without building tables per call."""
    bounds, grid = _tables(v.device)
    mag = grid[torch.bucketize(v.abs().clamp(max=_nv.FP4_MAX), bounds, right=False)]
    return torch.where(torch.signbit(v), -mag, mag)


def block_error(xb: torch.Tensor, total: torch.Tensor, h_blocks: torch.Tensor | None = None,
                col_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Error of RTN-encoding blocks ``xb`` [R, B, 16] at scales ``total`` [R, B] (s2 * block scale; > 0).
    ``h_blocks`` [B, 16, 16]: output-error metric per block; ``col_weight`` [B, 16]: diagonal metric."""
    t = total.unsqueeze(-1)
    e = _e2m1_round(xb / t) * t - xb
    if h_blocks is not None:
        return torch.einsum("rbi,bij,rbj->rb", e, h_blocks, e)
    if col_weight is not None:
        return (e * e * col_weight.unsqueeze(0)).sum(-1)
    return (e * e).sum(-1)


def search_block_codes(xb: torch.Tensor, s2: torch.Tensor, offsets=OFFSETS, h_blocks=None, col_weight=None):
    """Per block the e4m3 scale code (uint8 [R, B]) of least error among RTN's code + ``offsets``, and that
    error [R, B]. Blocks whose RTN scale is 0 (all-zero blocks, or underflow) keep code 0."""
    amax = xb.abs().amax(-1)
    rtn = torch.clamp(amax / 6.0 / s2, max=_nv.FP8_MAX).to(torch.float8_e4m3fn)
    c0 = rtn.view(torch.uint8).to(torch.int16)
    best_c = c0.clone()
    tot0 = rtn.float() * s2
    best_e = block_error(xb, torch.where(tot0 > 0, tot0, torch.ones_like(tot0)), h_blocks, col_weight)
    live = c0 > 0
    for d in offsets:
        if d == 0:
            continue
        c = (c0 + d).clamp(1, E4M3_TOP)
        val = c.to(torch.uint8).view(torch.float8_e4m3fn).float() * s2
        ok = live & (val > 0) & torch.isfinite(val)
        e = block_error(xb, torch.where(ok, val, torch.ones_like(val)), h_blocks, col_weight)
        better = ok & (e < best_e)
        best_e = torch.where(better, e, best_e)
        best_c = torch.where(better, c, best_c)
    return best_c.to(torch.uint8), best_e


def encode_with_codes(xb: torch.Tensor, codes: torch.Tensor, s2: torch.Tensor):
    """Blocks [R, B, 16] at the given e4m3 block-scale codes -> (packed uint8 [R, B*8], scales e4m3 [R, B]);
    the kernel's rounding (x / (s2 * scale), RNE to E2M1, zero-scale blocks all +0)."""
    bs = codes.view(torch.float8_e4m3fn)
    total = s2 * bs.float()
    zero = total == 0
    v = xb / torch.where(zero, torch.ones_like(total), total).unsqueeze(-1)
    c = _nv.e2m1_encode(v.clamp(-_nv.FP4_MAX, _nv.FP4_MAX))
    c = torch.where(zero.unsqueeze(-1), torch.zeros_like(c), c)
    r, b, _ = xb.shape
    return _nv.pack(c.reshape(r, b * BLOCK)), bs


def h_blocks_of(h: torch.Tensor) -> torch.Tensor:
    """The 16x16 diagonal blocks [K/16, 16, 16] of a [K, K] Gram matrix (K a multiple of 16)."""
    k = h.shape[0]
    nb = k // BLOCK
    idx = torch.arange(nb, device=h.device)
    return h.reshape(nb, BLOCK, nb, BLOCK)[idx, :, idx, :]


def quantize(w: torch.Tensor, *, h: torch.Tensor | None = None, objective: str = "mse", offsets=OFFSETS,
             global_factors=(1.0,), rows_per_chunk: int = 4096, ridge: float = 0.0):
    """NVFP4 with searched scales: 2-D ``w`` [N, K] -> (packed, swizzled block scales, s2), the kernel's
    return layout. ``h`` [K, K]: input Gram matrix (``objective="output"``; else ignored); ``ridge`` adds
    ``ridge * mean(diag h)`` to its diagonal (a share of plain weight error in the objective)."""
    if h is not None and ridge:
        h = h.to(torch.float32).clone()
        h.diagonal().add_(ridge * float(torch.diagonal(h).mean()))
    if w.dim() != 2:
        raise ValueError(f"nvfp4 needs a 2-D weight, got {list(w.shape)}")
    n, k = w.shape
    np_, kp = _nv.rup(n, 16), _nv.rup(k, 16)
    x = w.to(torch.float32)
    if (np_, kp) != (n, k):
        x = torch.nn.functional.pad(x, (0, kp - k, 0, np_ - n))
    hb = cw = None
    if objective == "output":
        if h is None:
            raise ValueError("objective 'output' needs the input Gram matrix h")
        h = h.to(device=x.device, dtype=torch.float32)
        if h.shape[0] != kp:
            h = torch.nn.functional.pad(h, (0, kp - h.shape[0], 0, kp - h.shape[0]))
        hb = h_blocks_of(h)
    elif objective == "diag":
        if h is None:
            raise ValueError("objective 'diag' needs the input Gram matrix h")
        d = torch.diagonal(h).to(device=x.device, dtype=torch.float32)
        cw = torch.nn.functional.pad(d, (0, kp - d.shape[0])).view(kp // BLOCK, BLOCK)
    elif objective != "mse":
        raise ValueError(f"unknown scale-search objective {objective!r}")
    xb = x.view(np_, kp // BLOCK, BLOCK)
    s2_0 = _nv.global_scale(w)
    best = None
    for f in global_factors:
        s2 = (s2_0 * torch.tensor(f, dtype=torch.float32, device=s2_0.device)).reshape(())
        codes, errs = [], 0.0
        for r0 in range(0, np_, rows_per_chunk):
            c, e = search_block_codes(xb[r0:r0 + rows_per_chunk], s2, offsets, hb, cw)
            codes.append(c)
            errs += float(e.double().sum())
        if best is None or errs < best[0]:
            best = (errs, s2, torch.cat(codes))
    _, s2, codes = best
    packed, bs = encode_with_codes(xb, codes, s2)
    return packed, _nv.swizzle(bs), s2
