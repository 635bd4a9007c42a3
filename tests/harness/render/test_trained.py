"""Renders of the trained tiny reference model in the real embedded ComfyUI are structured, where
the seeded random model's are saturated blobs. Every bound comes from a measurement in the same run:
the random model rendered by the same server with the same workflow, or the training images
themselves decoded by the same analytic TAEHV decoder (in-process, ComfyUI's own module)."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from harness.render import models, score
from harness.render.workflow import Workflow

SEEDS = (1, 2, 3)
SIZE = (96, 64)
SETTINGS = dict(steps=6, cfg=1.0, sampler="euler", scheduler="simple", cond_seed=1, neg_seed=2)


@pytest.fixture(scope="module")
def renders(comfy_session):
    s = comfy_session
    out = {}
    wf = Workflow.from_arg(None, None)
    for kind in ("trained", "random"):
        # both decoders side by side in models/vae (a vae_approx name must be exactly lighttaew2_1)
        vae = s.model(models.reference_vae(s.server.root, python=s.server.python, kind=kind), "vae", "VAELoader",
                      "vae_name", name=f"qg_taehv_{kind}.safetensors")
        name = s.model(models.reference_model(kind=kind))
        for seed in SEEDS:
            res = s.client.run(wf.build(name, seed, *SIZE, dict(SETTINGS, vae=vae), f"struct-{kind}"), timeout=300)
            out[(kind, seed)] = res.images[0][1]
        if kind == "trained":          # the other two classes, first seed
            for cond in (2, 3):
                res = s.client.run(wf.build(name, SEEDS[0], *SIZE, dict(SETTINGS, vae=vae, cond_seed=cond),
                                            f"struct-cond{cond}"), timeout=300)
                out[(f"cond{cond}", SEEDS[0])] = res.images[0][1]
    return out


def _training_images(class_id: int, n: int = 16, seed: int = 123):
    """``n`` training images of a class at the render size after the analytic latent map and ComfyUI's
    own TAEHV with the analytic decoder weights (in-process): what a perfect model would render."""
    import torch
    from harness.train import data, latent, tiny_model as tm
    tm._comfy()
    from comfy.taesd.taehv import TAEHV
    t = TAEHV(latent_channels=16, latent_format=None, show_progress_bar=False)
    t.load_state_dict(latent.taehv_decoder([(k, tuple(v.shape), str(v.dtype)) for k, v in t.state_dict().items()]))
    gen = torch.Generator().manual_seed(seed)
    rgb, _ = data.batch(gen, n, SIZE[1], SIZE[0], [class_id] * n)
    z = latent.encode(rgb)
    lat = z * torch.tensor(latent.WAN21_STD).view(1, -1, 1, 1) + torch.tensor(latent.WAN21_MEAN).view(1, -1, 1, 1)
    with torch.no_grad():
        img = t.decode(lat[:, :, None])[:, :, -1]
    return (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def data_stats():
    """Structure of the training images of the rendered class (cond_seed 1: disc)."""
    return [score.structure(i) for i in _training_images(SETTINGS["cond_seed"])]


def _disc(img):
    """(fraction of pixels that are the disc's red, centroid (x, y) of those pixels) of a class-1 render."""
    from harness.train import data
    px = np.asarray(img, dtype=np.float64) / 255.0
    red = np.sqrt(((px - np.array(data.PALETTES[1]["red"])) ** 2).sum(-1)) < 0.25
    ys, xs = np.nonzero(red)
    return float(red.mean()), (float(xs.mean()) if xs.size else -1.0, float(ys.mean()) if ys.size else -1.0)


def test_every_seed_draws_one_disc_somewhere_else(renders):
    """cond_seed 1 is the disc class: every trained render has one red disc (3-50 % of the pixels; the
    training discs cover 5-30 %) and the sampler seed moves it (centroids at least 4 px apart). The seeded
    random model draws no red disc at all."""
    discs = {seed: _disc(renders[("trained", seed)]) for seed in SEEDS}
    for seed, (share, _) in discs.items():
        assert 0.03 <= share <= 0.5, discs
    for a, b in itertools.combinations(SEEDS, 2):
        (xa, ya), (xb, yb) = discs[a][1], discs[b][1]
        assert np.hypot(xa - xb, ya - yb) >= 4, discs
    assert all(_disc(renders[("random", seed)])[0] < 0.03 for seed in SEEDS)


def test_renders_are_not_saturated(renders, data_stats):
    """Random: most channel values clip at 0/255. Trained: no more clipping than its training images show
    (+ 1 % of the pixels)."""
    bound = max(s["clipped"] for s in data_stats) + 0.01
    for seed in SEEDS:
        assert score.structure(renders[("trained", seed)])["clipped"] <= bound
        assert score.structure(renders[("random", seed)])["clipped"] > bound      # the bound separates them


def test_renders_have_the_structure_of_the_training_images(renders, data_stats):
    """Edge energy and spatial contrast of each trained render lie within the range of the training
    images of that class (decoded the same way), from half the smallest to twice the largest."""
    for m in ("edge", "spatial_std"):
        lo = 0.5 * min(s[m] for s in data_stats)
        hi = 2.0 * max(s[m] for s in data_stats)
        got = [score.structure(renders[("trained", seed)])[m] for seed in SEEDS]
        assert all(lo <= g <= hi for g in got), (m, lo, hi, got)


def _colour_model(imgs, bins: int = 8):
    """Log-probabilities of a ``bins``^3 RGB histogram of ``imgs`` (add-one smoothed)."""
    idx = (np.asarray(imgs).reshape(-1, 3).astype(np.int64) * bins) // 256
    h = np.bincount((idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2], minlength=bins ** 3) + 1.0
    return np.log(h / h.sum())


def _log_likelihood(img, model, bins: int = 8) -> float:
    idx = (np.asarray(img).reshape(-1, 3).astype(np.int64) * bins) // 256
    return float(model[(idx[:, 0] * bins + idx[:, 1]) * bins + idx[:, 2]].mean())


def test_the_conditioning_picks_what_is_drawn(renders):
    """cond_seed k renders class k (1 disc, 2 stripes, 3 boxes; each class has its own palette): under
    colour histograms of each class's training images (decoded the same way), every render is most
    likely under its own class. (The first trained model ignored its conditioning: all alike.)"""
    models_ = {k: _colour_model(_training_images(k)) for k in (1, 2, 3)}
    imgs = {1: renders[("trained", SEEDS[0])], 2: renders[("cond2", SEEDS[0])], 3: renders[("cond3", SEEDS[0])]}
    ll = {(r, k): _log_likelihood(imgs[r], models_[k]) for r in imgs for k in models_}
    table = "; ".join(f"render {r} under class {k}: {v:.2f}" for (r, k), v in ll.items())
    for r in imgs:
        assert max(models_, key=lambda k: ll[(r, k)]) == r, table
