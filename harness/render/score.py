"""Image scores, the way ComfyUI's own ``tests/compare`` does it: SSIM from scikit-image on RGB
uint8 pixels (``channel_axis``, ``data_range=255``). Plus a difference heat-map and pixel hashes."""
from __future__ import annotations

import base64
import hashlib
import io

import numpy as np


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import structural_similarity
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {a.shape} vs {b.shape}")
    win = min(7, min(a.shape[:2]) | 1)
    if win > min(a.shape[:2]):
        win -= 2
    return float(structural_similarity(a, b, channel_axis=2, data_range=255, win_size=win))


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def pixel_sha256(img: np.ndarray) -> str:
    """Hash of decoded pixels (shape + RGB bytes), independent of PNG metadata/compression."""
    h = hashlib.sha256(f"{img.shape}".encode())
    h.update(np.ascontiguousarray(img, dtype=np.uint8).tobytes())
    return h.hexdigest()


def fingerprint(img: np.ndarray, n: int = 8) -> list[int]:
    """A tiny n x n grey thumbnail (0-255), to judge a golden mismatch without storing images."""
    g = img.astype(np.float64).mean(axis=2)
    h, w = g.shape
    ys = np.linspace(0, h, n + 1).astype(int)
    xs = np.linspace(0, w, n + 1).astype(int)
    return [int(round(g[ys[i]:ys[i + 1], xs[j]:xs[j + 1]].mean())) for i in range(n) for j in range(n)]


def heatmap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| averaged over channels, mapped black -> red -> yellow -> white; full scale = 64 levels."""
    d = np.abs(a.astype(np.float32) - b.astype(np.float32)).mean(axis=2) / 64.0
    d = np.clip(d, 0, 1)
    r = np.clip(d * 3, 0, 1)
    g = np.clip(d * 3 - 1, 0, 1)
    bl = np.clip(d * 3 - 2, 0, 1)
    return (np.stack([r, g, bl], axis=2) * 255).round().astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def png_data_uri(img: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(img)).decode("ascii")


def structure(img: np.ndarray) -> dict:
    """How much spatial structure a render has: ``edge`` = mean Sobel gradient magnitude of the
    luminance (0-255 scale), ``spatial_std`` = std of the luminance over the image, ``clipped`` =
    fraction of channel values at 0 or 255 (saturation)."""
    g = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gx = (g[1:-1, 2:] - g[1:-1, :-2]) * 2 + (g[:-2, 2:] - g[:-2, :-2]) + (g[2:, 2:] - g[2:, :-2])
    gy = (g[2:, 1:-1] - g[:-2, 1:-1]) * 2 + (g[2:, :-2] - g[:-2, :-2]) + (g[2:, 2:] - g[:-2, 2:])
    return {"edge": float(np.hypot(gx, gy).mean() / 8.0), "spatial_std": float(g.std()),
            "clipped": float(((img == 0) | (img == 255)).mean())}
