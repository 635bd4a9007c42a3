"""Procedural training images (nothing downloaded): seeded scenes drawn with torch.

Each class is tied to one conditioning tensor: the output of the ``QGRandomConditioning`` node with
``seed = class id`` (1 x 16 x 4096 standard normal from a CPU generator), so the render workflow's
``cond_seed`` picks what is drawn:

* 1 ``shapes``: a two-colour linear-gradient background with 1-3 large discs and boxes (the default
  render: cond_seed 1);
* 2 ``stripes``: sinusoidal stripes of random period, angle, phase and colours;
* 3 ``blobs``: a checkerboard-like field of soft colour blobs (smooth random texture).
"""
from __future__ import annotations

import math

CLASSES = {1: "shapes", 2: "stripes", 3: "blobs"}
COND_TOKENS = 16
COND_DIM = 4096


def conditioning(class_id: int):
    """What ``QGRandomConditioning(seed=class_id, tokens=16, dim=4096, scale=1.0)`` returns."""
    import torch
    gen = torch.Generator(device="cpu").manual_seed(int(class_id))
    return torch.randn((1, COND_TOKENS, COND_DIM), generator=gen, dtype=torch.float32)


def _colour(gen, n=1):
    import torch
    return torch.rand(n, 3, generator=gen)


def _grid(h, w):
    import torch
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32) + 0.5, torch.arange(w, dtype=torch.float32) + 0.5,
                            indexing="ij")
    return yy, xx


def _gradient(gen, h, w):
    import torch
    yy, xx = _grid(h, w)
    a = float(torch.rand(1, generator=gen)) * 2 * math.pi
    t = (math.cos(a) * (xx / w - 0.5) + math.sin(a) * (yy / h - 0.5)) + 0.5
    c0, c1 = _colour(gen, 2)
    return c0.view(3, 1, 1) * (1 - t) + c1.view(3, 1, 1) * t


def shapes(gen, h, w):
    import torch
    img = _gradient(gen, h, w).clamp(0, 1)
    yy, xx = _grid(h, w)
    s = min(h, w)
    for _ in range(1 + int(torch.randint(0, 3, (1,), generator=gen))):
        col = _colour(gen)[0].view(3, 1, 1)
        cy, cx = float(torch.rand(1, generator=gen)) * h, float(torch.rand(1, generator=gen)) * w
        r = (0.18 + 0.17 * float(torch.rand(1, generator=gen))) * s
        if float(torch.rand(1, generator=gen)) < 0.5:
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r)
        else:
            ry = r * (0.6 + 0.6 * float(torch.rand(1, generator=gen)))
            mask = ((yy - cy).abs() <= ry) & ((xx - cx).abs() <= r)
        img = torch.where(mask, col, img)
    return img


def stripes(gen, h, w):
    import torch
    yy, xx = _grid(h, w)
    a = float(torch.rand(1, generator=gen)) * math.pi
    period = (0.35 + 0.5 * float(torch.rand(1, generator=gen))) * min(h, w)
    ph = float(torch.rand(1, generator=gen)) * 2 * math.pi
    t = 0.5 + 0.5 * torch.sin(2 * math.pi * (math.cos(a) * xx + math.sin(a) * yy) / period + ph)
    c0, c1 = _colour(gen, 2)
    return c0.view(3, 1, 1) * (1 - t) + c1.view(3, 1, 1) * t


def blobs(gen, h, w):
    import torch
    import torch.nn.functional as F
    cell = 32
    gh, gw = h // cell + 2, w // cell + 2
    low = torch.rand(1, 3, gh, gw, generator=gen)
    img = F.interpolate(low, size=(gh * cell, gw * cell), mode="bicubic", align_corners=False)[0]
    oy, ox = int(torch.randint(0, cell, (1,), generator=gen)), int(torch.randint(0, cell, (1,), generator=gen))
    return img[:, oy:oy + h, ox:ox + w].clamp(0, 1)


DRAW = {1: shapes, 2: stripes, 3: blobs}


def batch(gen, n: int, h: int, w: int, class_ids=None):
    """``n`` images [n, 3, h, w] in [0, 1] and their class ids (round-robin unless given)."""
    import torch
    ids = class_ids if class_ids is not None else [1 + (i % len(CLASSES)) for i in range(n)]
    return torch.stack([DRAW[c](gen, h, w) for c in ids]), list(ids)
