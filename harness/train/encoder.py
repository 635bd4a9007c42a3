"""The analytic TAEHV (lighttaew2_1) **encoder** of the tiny reference models: what ``VAEEncode`` gives
the edit model for a reference image (``ReferenceLatent``).

ComfyUI passes lighttaew2_1 images in [0, 1] unscaled and pads one frame to four (repeats). The
encoder weights set here make ComfyUI's own TAEHV encoder compute, exactly, the 8x8 patch mean of
the image mapped linearly into the latent space: ``l = A (mean_rgb - 0.5)`` (``A`` of
:func:`harness.train.latent.channel_map`; no ``atanh``: the encoder has no inverse of the decoder's
Clamp, and the edit model only has to read the reference, never decode it). Pixels are >= 0, so
the ReLUs pass them: the first conv copies RGB into channels 0-2, each TPool averages its frames,
each stride-2 conv averages 2x2 (taps at offsets 0 and +1), every MemBlock is the identity (zero
convs), the last conv applies ``A`` and the offset. The model sees ComfyUI's normalised latent
``(l - mean) / std`` (``latent_formats.Wan21``), which :func:`encode` returns.
"""
from __future__ import annotations

POOL_CONVS = ("encoder.3.weight", "encoder.8.weight", "encoder.13.weight")
TPOOLS = ("encoder.2.conv.weight", "encoder.7.conv.weight", "encoder.12.conv.weight")
LAST = "encoder.17"


def encode(rgb):
    """``rgb`` [..., 3, H, W] in [0, 1] -> the normalised reference latent [..., 16, H/8, W/8]."""
    import torch
    import torch.nn.functional as F
    from .latent import CHANNELS, FACTOR, WAN21_MEAN, WAN21_STD, channel_map
    a, _, _ = channel_map()
    lead = rgb.shape[:-3]
    x = rgb.reshape(-1, 3, rgb.shape[-2], rgb.shape[-1]).to(torch.float64)
    u = F.avg_pool2d(x, FACTOR) - 0.5
    lat = torch.einsum("kc,bchw->bkhw", a, u)
    mean = torch.tensor(WAN21_MEAN, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(WAN21_STD, dtype=torch.float64).view(1, -1, 1, 1)
    z = (lat - mean) / std
    return z.reshape(*lead, CHANNELS, z.shape[-2], z.shape[-1]).to(torch.float32)


def taehv_encoder(out: dict) -> dict:
    """Set the ``encoder.*`` tensors of a TAEHV state dict ``out`` (name -> fp32 tensor) in place."""
    import torch
    from .latent import channel_map
    a, _, _ = channel_map()
    for n, t in out.items():
        if n.startswith("encoder."):
            t.zero_()
    w0 = out["encoder.0.weight"]
    for c in range(3):
        w0[c, c, 1, 1] = 1.0
    for n in TPOOLS:
        w = out[n]
        stride = w.shape[1] // w.shape[0]
        for c in range(3):
            for s in range(stride):
                w[c, s * w.shape[0] + c, 0, 0] = 1.0 / stride
    for n in POOL_CONVS:
        w = out[n]
        for c in range(3):
            w[c, c, 1:3, 1:3] = 0.25
    wl, bl = out[f"{LAST}.weight"], out[f"{LAST}.bias"]
    af = a.to(torch.float32)
    wl[:, :3, 1, 1] = af
    bl.copy_(-0.5 * af.sum(1))
    return out
