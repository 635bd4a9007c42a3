"""The tiny reference models of the other families (Qwen-Image, Qwen-Image-Edit, WAN 2.2 A14B), in
process, with ComfyUI's own model classes: deterministic training, committed weights made by the
current scripts, the real-width Qwen-Image expansion computes what the core computes, the analytic
encoder is exact, the A14B switch step follows the boundary, and what each model draws."""
from __future__ import annotations

import json

import pytest
import torch

from harness.train import a14b_tiny, data, encoder, latent, qwen_tiny, registry
from quant.safetensors_io import SafetensorsFile


def _bytes(mod, cfg, tmp_path, name):
    state, info = mod.train(cfg, progress=False)
    info = {k: v for k, v in info.items() if k != "train_s"}
    return mod.save(state, tmp_path / name, cfg, info).read_bytes()


def test_qwen_training_is_deterministic(tmp_path):
    a = _bytes(qwen_tiny, qwen_tiny.config("qwen-image-tiny", steps=2, batch=2, seed=3), tmp_path, "a.st")
    b = _bytes(qwen_tiny, qwen_tiny.config("qwen-image-tiny", steps=2, batch=2, seed=3), tmp_path, "b.st")
    c = _bytes(qwen_tiny, qwen_tiny.config("qwen-image-tiny", steps=2, batch=2, seed=4), tmp_path, "c.st")
    assert a == b and a != c


def test_a14b_training_is_deterministic_and_experts_differ(tmp_path):
    a = _bytes(a14b_tiny, a14b_tiny.Config(expert="high", steps=2, batch=2), tmp_path, "a.st")
    b = _bytes(a14b_tiny, a14b_tiny.Config(expert="high", steps=2, batch=2), tmp_path, "b.st")
    c = _bytes(a14b_tiny, a14b_tiny.Config(expert="low", steps=2, batch=2), tmp_path, "c.st")
    assert a == b and a != c


@pytest.mark.parametrize("name", ["qwen-image-tiny", "qwen-image-edit-tiny", "wan22-a14b-tiny"])
def test_committed_weights_come_from_these_scripts(name):
    mod = a14b_tiny if name == a14b_tiny.NAME else qwen_tiny
    paths = registry.weights(name)
    assert paths and all(p.is_file() for p in paths)
    for p in paths:
        assert p.stat().st_size < 5_000_000
        with SafetensorsFile(p) as f:
            meta = dict(f.metadata)
            assert {f.info(n).dtype for n in f.keys()} == {"BF16"}
        assert meta["quantgate_model"] == name
        assert meta["quantgate_script_sha256"] == mod.script_hash(), \
            f"harness/train changed since {p.name} was trained: ./qg train-tiny --model {name} --force"
        rec = json.loads(meta["quantgate_train"])
        assert rec["loss_last50"] < 0.6 * rec["loss_first50"]


def test_qwen_expansion_computes_the_core():
    """The block-diagonal expansion (here to 2 heads; the committed file uses 24) computes exactly what
    the core computes, with and without a reference latent: ComfyUI's own QwenImage class both times."""
    torch.manual_seed(0)
    core = qwen_tiny.build_model()
    qwen_tiny.init_weights(core, 0)
    sd = {k: (v + 0.05 * torch.randn_like(v)).to(torch.bfloat16).float() for k, v in core.state_dict().items()}
    core.load_state_dict(sd)
    big = qwen_tiny.build_model(heads=2)
    big.load_state_dict(qwen_tiny.expand(sd, 2), strict=True)
    x = torch.randn(2, 16, 1, 8, 12)
    s = torch.tensor([0.7, 0.2])
    ctx = torch.cat([qwen_tiny.conditioning(1), qwen_tiny.conditioning(3)])
    ref = torch.randn(2, 16, 1, 8, 12)
    with torch.no_grad():
        for r in (None, [ref]):
            a, b = core(x, s, ctx, ref_latents=r), big(x, s, ctx, ref_latents=r)
            assert torch.allclose(a, b, atol=1e-5), float((a - b).abs().max())
            assert float(a.abs().mean()) > 0.05             # not a trivially zero output
        assert float((core(x, s, ctx) - core(x, s, ctx, ref_latents=[ref])).abs().max()) > 1e-3


def test_qwen_full_file_has_the_real_layout(tmp_path):
    from quant import arch
    p = qwen_tiny.write_full(registry.weights("qwen-image-tiny")[0], tmp_path / "q.safetensors")
    with SafetensorsFile(p) as f:
        shapes = {n: tuple(f.info(n).shape) for n in f.keys()}
        assert shapes["img_in.weight"] == (3072, 64) and shapes["txt_in.weight"] == (3072, 3584)
        assert shapes["transformer_blocks.0.img_mlp.net.0.proj.weight"] == (12288, 3072)
        assert shapes == {n: tuple(s) for n, s in arch.qwen_image(num_layers=1)}
        assert arch.detect(shapes) == "qwen_image"


def test_encoder_is_comfyuis_taehv_encoder():
    """ComfyUI's own TAEHV encoder with the analytic weights computes encoder.encode (what the edit model
    was trained on) for an image, one frame padded to four as ComfyUI does."""
    from harness.train import tiny_model
    tiny_model._comfy()
    from comfy.taesd.taehv import TAEHV
    t = TAEHV(latent_channels=16, latent_format=None, show_progress_bar=False)
    t.load_state_dict(encoder.taehv_encoder({k: torch.zeros_like(v) for k, v in t.state_dict().items()}))
    rgb = qwen_tiny.edit_scenes(torch.Generator().manual_seed(1), 2, 64, 96)
    with torch.no_grad():
        lat = t.encode(rgb[:, :, None])[:, :, 0]
    z = (lat - torch.tensor(latent.WAN21_MEAN).view(1, -1, 1, 1)) / torch.tensor(latent.WAN21_STD).view(1, -1, 1, 1)
    assert torch.allclose(z, encoder.encode(rgb), atol=1e-5)


def test_a14b_switch_follows_the_boundary():
    from harness.train import tiny_model
    for steps in (4, 6, 8, 20):
        k = a14b_tiny.switch_step(steps)
        sig = tiny_model.simple_sigmas(steps)
        assert sig[k] < a14b_tiny.BOUNDARY <= sig[k - 1]
    assert registry.template_values("wan22_a14b_t2v_smoke", {"steps": 6}) == {"switch_step": 4}


def test_qwen_core_draws_the_class_it_is_given():
    """Text-to-image with the committed qwen-image-tiny core (in process, the workflow's sampler, 2 seeds):
    each conditioning's render is likeliest under the colour histogram of its own class's training
    images (the one-block core gets each class's palette; its shapes are blobs)."""
    from harness.train.colour import class_models, likeliest_class
    models = class_models()
    m = qwen_tiny.load_model(registry.weights("qwen-image-tiny")[0])
    for c in (1, 2, 3):
        for seed in (1, 2):
            rgb = latent.decode_coarse(qwen_tiny.sample(m, c, seed=seed, h=8, w=12)[0, :, 0]).clamp(0, 1)
            assert likeliest_class(rgb.permute(1, 2, 0).numpy(), models) == c, (c, seed)


def test_edit_core_inverts_the_reference():
    """The edit core given a reference image draws it with the colours inverted: the coarse colour of
    the render is closer to 1 - reference than to the reference or to its text-to-image render."""
    m = qwen_tiny.load_model(registry.weights("qwen-image-edit-tiny")[0])
    ref = qwen_tiny.edit_scenes(torch.Generator().manual_seed(7), 1, 64, 96)
    z = qwen_tiny.sample(m, 1, seed=1, h=8, w=12, ref=encoder.encode(ref)[:, :, None])
    rgb = latent.decode_coarse(z[0, :, 0]).clamp(0, 1)
    want = torch.nn.functional.avg_pool2d(1 - ref, 8)[0]
    err_inv = float((rgb - want).abs().mean())
    err_ref = float((rgb - torch.nn.functional.avg_pool2d(ref, 8)[0]).abs().mean())
    assert err_inv < 0.12 and err_inv < 0.5 * err_ref, (err_inv, err_ref)
