"""Synthetic input activations with trained-transformer statistics, for learned-rounding tests and
benchmarks (nothing is downloaded; deterministic from a seed)."""
from __future__ import annotations

import math

import torch


def activations(k: int, seed: int = 0, rank: int | None = None, device="cpu"):
    """A sampler ``draw(m) -> [m, k]``: a low-rank correlated part (rank k/16) plus isotropic noise, times
    log-normal per-channel gains (sigma 0.8) with k/64 outlier channels x15. The distribution is fixed by
    ``seed``; successive draws are independent samples (calibration rows, then held-out rows)."""
    g = torch.Generator(device=device).manual_seed(seed)
    r = rank or max(1, k // 16)
    gains = torch.exp(0.8 * torch.randn(k, generator=g, device=device))
    gains[torch.randperm(k, generator=g, device=device)[: max(1, k // 64)]] *= 15.0
    mix = torch.randn(r, k, generator=g, device=device) / math.sqrt(r)

    def draw(m: int) -> torch.Tensor:
        z = torch.randn(m, r, generator=g, device=device)
        e = torch.randn(m, k, generator=g, device=device)
        return (2.0 * (z @ mix) + e) * gains
    return draw
