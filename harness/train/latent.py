"""The fixed, analytic latent space of the trained tiny reference model.

A latent pixel stands for the mean colour of an 8x8 pixel patch (the WAN 2.1 VAE's 8x spatial
factor). ``u = rgb - 0.5`` is spread over all 16 latent channels by a fixed matrix ``A`` (16x3:
orthonormal columns from a seeded QR, each row scaled so that channel reaches +/-``V_MAX`` at the
extreme colours); ``v = A u`` is what the TAEHV decoder sees after its first layer (``Clamp``:
``3 * tanh(x / 3)``), so the raw latent is ``l = 3 * atanh(v / 3)`` and the diffusion model works
on ComfyUI's normalised latent ``z = (l - mean) / std`` (``latent_formats.Wan21``); on the
procedural data z has a standard deviation of about 0.7.

The TAEHV ``lighttaew2_1`` decoder is set analytically (:func:`taehv_decoder`) to invert this map
exactly: its first conv recovers ``u = pinv(A) v`` as +/- channel pairs (they survive the ReLUs),
its three nearest-upsampling stages are each followed by a [1,2,1]x[1,2,1]/16 blur (about
bilinear), every MemBlock is the identity (zero convs) and the last conv gives
``rgb = 0.5 + u+ - u-``.
"""
from __future__ import annotations

import math

# ComfyUI 0.3.75 comfy/latent_formats.py Wan21 (the model's latent normalisation)
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
CHANNELS = 16
FACTOR = 8          # pixels per latent pixel (each side)
V_MAX = 2.9        # |v| bound (the decoder's Clamp saturates at 3)
MAP_SEED = 20250    # the fixed channel map (not the training seed)


def channel_map():
    """``(M [16,3], c [16], g)`` of the latent map (see the module docstring)."""
    import torch
    gen = torch.Generator().manual_seed(MAP_SEED)
    m, _ = torch.linalg.qr(torch.randn(CHANNELS, 3, generator=gen, dtype=torch.float64))
    d = V_MAX / (0.5 * m.abs().sum(1))                   # per-channel gain: each channel reaches +/-V_MAX
    a = d.view(-1, 1) * m                                # u -> v - c  [16, 3]
    c = torch.zeros(CHANNELS, dtype=torch.float64)
    return a, c, torch.linalg.pinv(a)                    # pinv(a) @ a = I3: the decoder's exact inverse


def encode(rgb):
    """``rgb`` [..., 3, H, W] in [0, 1] (H, W multiples of 8) -> normalised latent z [..., 16, H/8, W/8]."""
    import torch
    import torch.nn.functional as F
    a, c, _ = channel_map()
    lead = rgb.shape[:-3]
    x = rgb.reshape(-1, 3, rgb.shape[-2], rgb.shape[-1]).to(torch.float64)
    u = F.avg_pool2d(x, FACTOR) - 0.5
    v = c.view(1, -1, 1, 1) + torch.einsum("kc,bchw->bkhw", a, u)
    lat = 3.0 * torch.atanh(v / 3.0)
    mean = torch.tensor(WAN21_MEAN, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(WAN21_STD, dtype=torch.float64).view(1, -1, 1, 1)
    z = (lat - mean) / std
    return z.reshape(*lead, CHANNELS, z.shape[-2], z.shape[-1]).to(torch.float32)


def decode_coarse(z):
    """Normalised latent [..., 16, h, w] -> the latent-resolution colour [..., 3, h, w] the decoder upsamples."""
    import torch
    _, c, inv = channel_map()
    mean = torch.tensor(WAN21_MEAN, dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor(WAN21_STD, dtype=torch.float64).view(-1, 1, 1)
    v = 3.0 * torch.tanh((z.to(torch.float64) * std + mean) / 3.0)
    u = torch.einsum("ck,...khw->...chw", inv, v - c.view(-1, 1, 1))
    return (0.5 + u).to(torch.float32)


_BLUR = (1.0, 2.0, 1.0)


def _blur_kernel():
    import torch
    k = torch.tensor(_BLUR, dtype=torch.float32)
    return torch.outer(k, k) / 16.0


def taehv_decoder(shapes) -> dict:
    """TAEHV (lighttaew2_1) tensors for ``shapes`` [(name, shape, dtype)] from ComfyUI's own module:
    the decoder inverts :func:`encode` (see the module docstring), the encoder is zero (never used by
    the render workflow: the latent is sampled, not encoded)."""
    import torch
    _, c, inv = channel_map()
    out = {name: torch.zeros(shape, dtype=torch.float32) for name, shape, _ in shapes}
    need = ("decoder.1.weight", "decoder.1.bias", "decoder.8.weight", "decoder.14.weight",
            "decoder.20.weight", "decoder.22.weight", "decoder.22.bias")
    missing = [n for n in need if n not in out]
    if missing:
        raise ValueError(f"TAEHV layout without {', '.join(missing)}")
    # decoder.1: conv(16 -> 256) on Clamp(l) = v: channel 2j = +u_j, 2j+1 = -u_j
    w1, b1 = out["decoder.1.weight"], out["decoder.1.bias"]
    mt = inv.to(torch.float32)                            # [3, 16]
    off = (inv @ c).to(torch.float32)                     # [3]
    for j in range(3):
        w1[2 * j, :, 1, 1] = mt[j]
        b1[2 * j] = -off[j]
        w1[2 * j + 1, :, 1, 1] = -mt[j]
        b1[2 * j + 1] = off[j]
    # TGrow convs: identity, repeated for each output frame
    for name, t in out.items():
        if name.startswith("decoder.") and name.endswith(".conv.weight") and t.dim() == 4 and t.shape[-1] == 1:
            n_f = t.shape[1]
            for s in range(t.shape[0] // n_f):
                t[s * n_f:(s + 1) * n_f, :, 0, 0] = torch.eye(n_f)
    # the conv after each upsample: blur the 6 carried channels
    k = _blur_kernel()
    for name in ("decoder.8.weight", "decoder.14.weight", "decoder.20.weight"):
        for ch in range(6):
            out[name][ch, ch] = k
    w22, b22 = out["decoder.22.weight"], out["decoder.22.bias"]
    for j in range(3):
        w22[j, 2 * j, 1, 1] = 1.0
        w22[j, 2 * j + 1, 1, 1] = -1.0
        b22[j] = 0.5
    return out


def latent_stats(z) -> dict:
    return {"z_std": float(z.std()), "z_absmax": float(z.abs().max()),             "mean_abs_z": float(z.abs().mean()), "pixels_per_latent": FACTOR, "v_max": V_MAX, "channels": CHANNELS}
