"""Procedural training images (nothing downloaded): seeded scenes drawn with torch.

Each class is tied to one conditioning tensor: the output of the ``QGRandomConditioning`` node with
``seed = class id`` (1 x 16 x 4096 standard normal from a CPU generator), so the render workflow's
``cond_seed`` picks what is drawn. Every class has its own fixed palette (``PALETTES``), so a render
can be checked for drawing the class it was asked for; position, size, angle and phase are random:

* 1 ``disc``: one red disc on a blue-to-yellow gradient of random direction (the default render:
  cond_seed 1; the random direction keeps two seeds' renders apart for the gate's control);
* 2 ``stripes``: navy/cream sinusoidal stripes, horizontal or vertical, random period and phase;
* 3 ``boxes``: an orange and a cyan box on dark grey (the cyan one drawn last, on top).

The renders are small (64x64 and 96x64 pixels = 8x8 and 8x12 latents), so the scenes are large,
plain and few-coloured: what a model of this size can learn in minutes on a CPU.
"""
from __future__ import annotations

import math

CLASSES = {1: "disc", 2: "stripes", 3: "boxes"}
COND_TOKENS = 16
COND_DIM = 4096
PALETTES = {
    1: {"blue": (0.10, 0.20, 0.65), "yellow": (0.95, 0.85, 0.25), "red": (0.85, 0.12, 0.15)},
    2: {"navy": (0.08, 0.10, 0.30), "cream": (0.95, 0.92, 0.80)},
    3: {"grey": (0.22, 0.22, 0.25), "orange": (0.95, 0.55, 0.10), "cyan": (0.15, 0.80, 0.85)},
}


def conditioning(class_id: int):
    """What ``QGRandomConditioning(seed=class_id, tokens=16, dim=4096, scale=1.0)`` returns."""
    import torch
    gen = torch.Generator(device="cpu").manual_seed(int(class_id))
    return torch.randn((1, COND_TOKENS, COND_DIM), generator=gen, dtype=torch.float32)


def _c(class_id: int, name: str):
    import torch
    return torch.tensor(PALETTES[class_id][name], dtype=torch.float32).view(3, 1, 1)


def _u(gen) -> float:
    import torch
    return float(torch.rand(1, generator=gen))


def _grid(h, w):
    import torch
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                            indexing="ij")
    return yy, xx


def disc(gen, h, w):
    import torch
    yy, xx = _grid(h, w)
    a = _u(gen) * 2 * math.pi
    t = math.cos(a) * (xx / w - 0.5) + math.sin(a) * (yy / h - 0.5) + 0.5
    img = _c(1, "blue") * (1 - t) + _c(1, "yellow") * t
    r = (0.22 + 0.10 * _u(gen)) * min(h, w)
    cy, cx = r + _u(gen) * (h - 2 * r), r + _u(gen) * (w - 2 * r)
    return torch.where((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r, _c(1, "red"), img).clamp(0, 1)


def stripes(gen, h, w):
    import torch
    yy, xx = _grid(h, w)
    along = yy if _u(gen) < 0.5 else xx
    period = (0.5 + 0.25 * _u(gen)) * min(h, w)
    t = 0.5 + 0.5 * torch.sin(2 * math.pi * along / period + _u(gen) * 2 * math.pi)
    return _c(2, "navy") * (1 - t) + _c(2, "cream") * t


def boxes(gen, h, w):
    import torch
    yy, xx = _grid(h, w)
    img = _c(3, "grey").expand(3, h, w).clone()
    s = min(h, w)
    for name in ("orange", "cyan"):
        bh, bw = (0.18 + 0.12 * _u(gen)) * s, (0.18 + 0.12 * _u(gen)) * s
        cy, cx = bh + _u(gen) * (h - 2 * bh), bw + _u(gen) * (w - 2 * bw)
        img = torch.where(((yy - cy).abs() <= bh) & ((xx - cx).abs() <= bw), _c(3, name), img)
    return img


DRAW = {1: disc, 2: stripes, 3: boxes}


def batch(gen, n: int, h: int, w: int, class_ids=None):
    """``n`` images [n, 3, h, w] in [0, 1] and their class ids (round-robin unless given)."""
    import torch
    ids = class_ids if class_ids is not None else [1 + (i % len(CLASSES)) for i in range(n)]
    return torch.stack([DRAW[c](gen, h, w) for c in ids]), list(ids)

