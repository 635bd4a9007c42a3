"""Which class a render draws, by colour: log-likelihood of its pixels under an RGB histogram of each
class's procedural training images (harness.train.data), as tests/harness/render/test_trained.py does
with decoded images."""
from __future__ import annotations

import numpy as np

BINS = 8


def class_models(h: int = 64, w: int = 96, n: int = 32, seed: int = 123) -> dict:
    import torch
    from harness.train import data
    out = {}
    for c in data.CLASSES:
        rgb, _ = data.batch(torch.Generator().manual_seed(seed + c), n, h, w, [c] * n)
        px = (rgb.permute(0, 2, 3, 1).reshape(-1, 3).numpy() * 255).round().astype(np.int64)
        idx = (px * BINS) // 256
        hist = np.bincount((idx[:, 0] * BINS + idx[:, 1]) * BINS + idx[:, 2], minlength=BINS ** 3) + 1.0
        out[c] = np.log(hist / hist.sum())
    return out


def log_likelihood(img, model) -> float:
    """``img``: HxWx3 uint8 (or floats in [0, 1])."""
    a = np.asarray(img)
    px = (a * 255).round().astype(np.int64) if a.dtype.kind == "f" else a.astype(np.int64)
    idx = (px.reshape(-1, 3) * BINS) // 256
    return float(model[(idx[:, 0] * BINS + idx[:, 1]) * BINS + idx[:, 2]].mean())


def likeliest_class(img, models) -> int:
    return max(models, key=lambda c: log_likelihood(img, models[c]))
