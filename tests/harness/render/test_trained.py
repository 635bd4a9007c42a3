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
    return out


@pytest.fixture(scope="module")
def data_stats():
    """Structure of the training images of the rendered class (cond_seed 1: shapes) after the
    analytic latent map and ComfyUI's own TAEHV with the analytic decoder weights."""
    import torch
    from harness.train import data, latent, tiny_model as tm
    tm._comfy()
    from comfy.taesd.taehv import TAEHV
    t = TAEHV(latent_channels=16, latent_format=None, show_progress_bar=False)
    t.load_state_dict(latent.taehv_decoder([(k, tuple(v.shape), str(v.dtype)) for k, v in t.state_dict().items()]))
    gen = torch.Generator().manual_seed(123)
    rgb, _ = data.batch(gen, 16, SIZE[1], SIZE[0], [SETTINGS["cond_seed"]] * 16)
    z = latent.encode(rgb)
    lat = z * torch.tensor(latent.WAN21_STD).view(1, -1, 1, 1) + torch.tensor(latent.WAN21_MEAN).view(1, -1, 1, 1)
    with torch.no_grad():
        img = t.decode(lat[:, :, None])[:, :, -1]
    imgs = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [score.structure(i) for i in imgs]


def _pairs(renders, kind):
    return [score.ssim(renders[(kind, a)], renders[(kind, b)]) for a, b in itertools.combinations(SEEDS, 2)]


def test_seeds_draw_different_images_unlike_the_random_model(renders):
    """The random model draws nearly the same blob whatever the seed; the trained one draws a new scene."""
    trained, random = _pairs(renders, "trained"), _pairs(renders, "random")
    assert max(trained) < min(random), (trained, random)


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
