"""A plain-torch re-implementation of the decoder of ComfyUI's WAN 2.1 VAE (``comfy/ldm/wan/vae.py``),
for timing decode on a GPU without ComfyUI: same modules, same parameter names and shapes (a CPU test
checks them against ComfyUI's own class: tests/data/non_transformer_layouts.json), same convolutions.

Differences, on purpose: the whole clip is decoded in one pass (ComfyUI decodes chunk by chunk with a
causal feature cache; the convolutions and their shapes are the same, the first latent frame is not
time-upsampled in either), and there is no encoder.

``fp8`` storage: every conv weight is kept as float8_e4m3fn and cast to the compute dtype inside each
forward (what ComfyUI's ``manual_cast`` ops do with a weight stored in another dtype); norms and biases
stay in the compute dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _CastConv:
    store_fp8 = False

    def _w(self, x):
        w = self.weight
        return w if w.dtype == x.dtype else w.to(x.dtype)

    def _b(self, x):
        b = self.bias
        return None if b is None else (b if b.dtype == x.dtype else b.to(x.dtype))


class CausalConv3d(nn.Conv3d, _CastConv):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self._tpad = 2 * self.padding[0]
        self._spad = (self.padding[2], self.padding[2], self.padding[1], self.padding[1])
        self.padding = (0, 0, 0)

    def forward(self, x):
        x = F.pad(x, self._spad + (self._tpad, 0))
        return F.conv3d(x, self._w(x), self._b(x), self.stride)


class Conv2d(nn.Conv2d, _CastConv):
    def forward(self, x):
        return F.conv2d(x, self._w(x), self._b(x), self.stride, self.padding)


class RMSNorm(nn.Module):
    def __init__(self, dim, images=True):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.scale * self.gamma.to(x.dtype)


def _frames(fn, x):
    """Apply a 2-D op to every frame of [b, c, t, h, w]."""
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class Resample(nn.Module):
    def __init__(self, dim, mode):
        super().__init__()
        self.mode = mode
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      Conv2d(dim, dim // 2, 3, padding=1))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x):
        if self.mode == "upsample3d":
            b, c, t, h, w = x.shape
            y = self.time_conv(x).reshape(b, 2, c, t, h, w)
            y = torch.stack((y[:, 0], y[:, 1]), 3).reshape(b, c, 2 * t, h, w)
            x = torch.cat([x[:, :, :1], y[:, :, 2:]], 2)          # first frame is not time-upsampled: 2t-1 frames
        return _frames(self.resample, x)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.residual = nn.Sequential(RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
                                      RMSNorm(out_dim, images=False), nn.SiLU(), nn.Dropout(0.0),
                                      CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim)
        self.to_qkv = Conv2d(dim, dim * 3, 1)
        self.proj = Conv2d(dim, dim, 1)

    def _attn(self, x):
        n, c, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(n, 1, c, h * w).transpose(-1, -2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(-1, -2).reshape(n, c, h, w))

    def forward(self, x):
        return x + _frames(self._attn, x)


class Decoder3d(nn.Module):
    def __init__(self, dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, temperal_upsample=(True, True, False)):
        super().__init__()
        dims = [dim * u for u in [dim_mult[-1]] + list(dim_mult[::-1])]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0]), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0]))
        ups = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i in (1, 2, 3):
                in_dim = in_dim // 2
            for _ in range(num_res_blocks + 1):
                ups.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                ups.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*ups)
        self.head = nn.Sequential(RMSNorm(out_dim, images=False), nn.SiLU(), CausalConv3d(out_dim, 3, 3, padding=1))

    def forward(self, z):
        return self.head(self.upsamples(self.middle(self.conv1(z))))


class WanVAEDecoder(nn.Module):
    """``conv2`` + ``decoder`` of ComfyUI's WanVAE (the parameters a decode touches)."""

    def __init__(self, dim=96, z_dim=16):
        super().__init__()
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim)

    def forward(self, z):
        return self.decoder(self.conv2(z)).clamp(-1.0, 1.0)


def build(dim=96, z_dim=16, *, dtype=torch.bfloat16, device="cpu", fp8: bool = False, seed: int = 0) -> WanVAEDecoder:
    """Random-weight decoder (fan-in scaled normal weights, seeded). ``fp8``: conv weights stored as
    float8_e4m3fn (cast to ``dtype`` in every forward)."""
    g = torch.Generator().manual_seed(seed)
    m = WanVAEDecoder(dim, z_dim)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith(".weight") and p.dim() >= 4:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)
            elif name.endswith(".bias"):
                p.zero_()
    m = m.to(device=device, dtype=dtype)
    if fp8:
        for mod in m.modules():
            if isinstance(mod, (CausalConv3d, Conv2d)):
                mod.weight = nn.Parameter(mod.weight.detach().to(torch.float8_e4m3fn), requires_grad=False)
    return m.eval().requires_grad_(False)


def weight_bytes(m: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in m.parameters())
