"""quantgate's eager NVFP4 row kernel as it was before issue 11 (the 133 MB/s baseline), kept only so
the CPU benchmark measures the old and the new kernel side by side in one run. Same bits."""
import torch

from quant.kernels.common import const
from quant.kernels.nvfp4 import BLOCK, FP4_MAX, FP8_MAX, e2m1_encode, global_scale, pack, rup, swizzle
from quant.kernels.common import ensure_finite

CHUNK_ELEMS = 1 << 22


def _rows(x, s2):
    rows, kp = x.shape
    xb = x.reshape(rows, kp // BLOCK, BLOCK)
    amax_b = xb.abs().amax(dim=-1).to(torch.float32)
    bs = torch.clamp(amax_b / const(FP4_MAX, amax_b) / s2, max=FP8_MAX).to(torch.float8_e4m3fn)
    total = s2 * bs.to(torch.float32)
    zero = total == 0
    total = torch.where(zero, torch.ones_like(total), total)
    v = xb.to(torch.float32) / total.unsqueeze(-1)
    v = torch.where(zero.unsqueeze(-1), torch.zeros_like(v), v).clamp_(-FP4_MAX, FP4_MAX)
    return pack(e2m1_encode(v.reshape(rows, kp))), bs


def quantize(x):
    ensure_finite(x, None)
    s2 = global_scale(x)
    n, k = x.shape
    np_, kp = rup(n, 16), rup(k, 16)
    if (np_, kp) != (n, k):
        x = torch.nn.functional.pad(x, (0, kp - k, 0, np_ - n))
    packed = torch.empty((np_, kp // 2), dtype=torch.uint8)
    bs = torch.empty((np_, kp // BLOCK), dtype=torch.float8_e4m3fn)
    step = max(16, (CHUNK_ELEMS // kp) // 16 * 16)
    for r0 in range(0, np_, step):
        r1 = min(np_, r0 + step)
        packed[r0:r1], bs[r0:r1] = _rows(x[r0:r1], s2)
    return packed, swizzle(bs), s2
