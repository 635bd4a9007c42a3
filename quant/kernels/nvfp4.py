"""NVFP4 (ComfyUI ``nvfp4``): E2M1 codes, 16-element blocks along K, e4m3 block scales in the
cuBLAS 128x4 swizzled layout, a float32 per-tensor ``weight_scale_2``.

Every function is vectorised torch code that runs on CPU and CUDA. Round-to-nearest is bit-exact
with comfy-kitchen's ``quantize_nvfp4(x, s2, pad_16x=True)`` for the same global scale.

Conventions (the ones ComfyUI and comfy-kitchen use):
  * packing: even element in the HIGH nibble: ``byte = code[2j] << 4 | code[2j+1]``
  * scales: logical S[r, c] (r < rup(N,16), c < K_pad/16) stored as (rup(N,128), rup(C,4)) with
    flat offset ((r//128 * C4/4 + c//4) * 32 + r%32) * 16 + ((r%128)//32) * 4 + c%4, zero padded
  * decode: x = E2M1(code) * float(block_scale) * weight_scale_2
"""
from __future__ import annotations

import sys

import torch

from ..errors import InputError, ShapeError
from .common import E2M1_MAX, E4M3_MAX, checked_amax, const, per_tensor_scale, rup, scale_of
from .facts import BLOCK, packed_shape, scale_shape  # noqa: F401  (torch-free, re-exported)

FP4_MAX = E2M1_MAX
FP8_MAX = E4M3_MAX
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


# ---- E2M1 codes --------------------------------------------------------------------------
# Decision boundaries between neighbouring magnitudes. Ties go to the even code: at 0.25, 1.25,
# 2.5, 5.0 down; at 0.75, 1.75, 3.5 up. "#boundaries < |v|" gives the code when the up-tie
# boundaries are moved one float32 ulp down.
def _boundaries(device) -> torch.Tensor:
    b = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], dtype=torch.float32)
    up = torch.tensor([False, True, False, True, False, True, False])
    b = torch.where(up, torch.nextafter(b, torch.full_like(b, -1.0)), b)
    return b.to(device)


def e2m1_encode(v: torch.Tensor) -> torch.Tensor:
    """float32 values (already scaled, |v| <= 6) -> uint8 codes 0..15, round-to-nearest-even."""
    mag = torch.bucketize(v.abs(), _boundaries(v.device), out_int32=True, right=False).to(torch.uint8)
    return mag | (torch.signbit(v).to(torch.uint8) << 3)


def e2m1_decode(codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    lut = torch.tensor(E2M1_VALUES + tuple(-x for x in E2M1_VALUES), dtype=dtype, device=codes.device)
    return lut[codes.long()]


def pack(codes: torch.Tensor) -> torch.Tensor:
    """[..., 2m] codes -> [..., m] bytes, even element in the high nibble."""
    c = codes.reshape(*codes.shape[:-1], -1, 2)
    return (c[..., 0] << 4) | c[..., 1]


def unpack(packed: torch.Tensor) -> torch.Tensor:
    hi, lo = packed >> 4, packed & 0x0F
    return torch.stack([hi, lo], dim=-1).reshape(*packed.shape[:-1], -1)


# ---- cuBLAS block-scale swizzle ----------------------------------------------------------
def swizzle(s: torch.Tensor) -> torch.Tensor:
    """Row-major logical scales [R, C] -> swizzled [rup(R,128), rup(C,4)] (zero padded)."""
    r, c = s.shape
    rp, cp = rup(r, 128), rup(c, 4)
    p = torch.zeros((rp, cp), dtype=s.dtype, device=s.device)
    p[:r, :c] = s
    blocks = p.view(rp // 128, 4, 32, cp // 4, 4).permute(0, 3, 2, 1, 4)
    return blocks.reshape(rp, cp)


def unswizzle(sw: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Swizzled [rup(rows,128), rup(cols,4)] -> logical [rows, cols]."""
    rp, cp = sw.shape
    if rp % 128 or cp % 4 or rp < rows or cp < cols:
        raise ShapeError(f"block-scale shape {list(sw.shape)} cannot hold {rows}x{cols} swizzled scales")
    blocks = sw.reshape(rp // 128, cp // 4, 32, 4, 4).permute(0, 3, 2, 1, 4)
    return blocks.reshape(rp, cp)[:rows, :cols]


# ---- quantize / dequantize ---------------------------------------------------------------
def global_scale(x: torch.Tensor) -> torch.Tensor:
    """weight_scale_2 = amax(|x|)/(448*6), float32 0-d (1.0 for an all-zero tensor)."""
    return per_tensor_scale(x, FP8_MAX * FP4_MAX)


def quantize(x: torch.Tensor, s2: torch.Tensor | None = None, *, name: str | None = None,
             check_finite: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize a 2-D weight [N, K] -> (packed U8 [rup(N,16), rup(K,16)/2],
    swizzled F8_E4M3 block scales, float32 0-d weight_scale_2)."""
    if x.dim() != 2:
        raise ShapeError(f"nvfp4 needs a 2-D weight, got shape {list(x.shape)}", name)
    if not x.is_floating_point():
        raise InputError(f"cannot quantize a {x.dtype} tensor to nvfp4", name)
    if check_finite or s2 is None:
        amax = checked_amax(x, name, check_finite)          # one pass: the check and the scale
        if s2 is None:
            s2 = scale_of(amax, FP8_MAX * FP4_MAX)
    s2 = s2.to(device=x.device, dtype=torch.float32).reshape(())
    n, k = x.shape
    np_, kp = rup(n, 16), rup(k, 16)
    if (np_, kp) != (n, k):
        x = torch.nn.functional.pad(x, (0, kp - k, 0, np_ - n))
    packed = torch.empty((np_, kp // 2), dtype=torch.uint8, device=x.device)
    bs = torch.empty((np_, kp // BLOCK), dtype=torch.float8_e4m3fn, device=x.device)
    # row chunks: single-threaded on a CPU, small enough for the float32/int32 temporaries to stay in
    # cache; with intra-op threads, large (every op pays a thread barrier: at load ~15 on 2 cores the
    # 256K chunks made this kernel 6x slower than the old 4M-chunk one with 2 threads); on a GPU, few launches
    if x.device.type != "cpu":
        chunk = 1 << 24
    else:
        chunk = CHUNK_ELEMS if torch.get_num_threads() == 1 else 1 << 22
    step = max(16, (chunk // kp) // 16 * 16)
    for r0 in range(0, np_, step):
        r1 = min(np_, r0 + step)
        packed[r0:r1], bs[r0:r1] = _quantize_rows(x[r0:r1], s2)
    return packed, swizzle(bs), s2


CHUNK_ELEMS = 1 << 18
_SIX_BITS = 0x40C00000          # float32 6.0
_ONE_BITS = 0x3F800000          # float32 1.0


def _quantize_rows(x: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One row chunk in few vectorised passes, the same bits as ``pack(e2m1_encode(clamp(x/total)))``:
    block amax by max-pooling |x|; v = x / total (IEEE division); |v| clamped to 6 and rounded to E2M1
    in integer arithmetic: RNE(2|v|) below 1, else the float rounded to one mantissa bit, ties to even
    (exactly the boundary rule: 0.25/1.25/2.5/5 down, 0.75/1.75/3.5 up); the sign of v is the sign of
    x; zero-scale blocks are all +0; even element in the high nibble."""
    rows, kp = x.shape
    nb = kp // BLOCK
    xf = torch.empty((rows, kp), dtype=torch.float32, device=x.device)
    xf.copy_(x)
    a = xf.abs()
    amax_b = torch.nn.functional.max_pool1d(a.view(1, rows, kp), BLOCK, BLOCK).view(rows, nb)
    bs = torch.clamp(amax_b / const(FP4_MAX, amax_b) / s2, max=FP8_MAX).to(torch.float8_e4m3fn)
    total = s2 * bs.to(torch.float32)
    zero = total == 0
    has_zero = bool(zero.any()) if x.device.type == "cpu" else True     # no host sync on a GPU
    if has_zero:
        total.masked_fill_(zero, 1.0)
    vb = xf.view(rows, nb, BLOCK).div_(total.unsqueeze(-1)).view(rows, kp).view(torch.int32)
    ab = a.view(torch.int32)
    torch.bitwise_and(vb, 0x7FFFFFFF, out=ab)                                  # |v|
    ab.clamp_(max=_SIX_BITS)
    small = ab < _ONE_BITS
    qs = a.mul(2.0).add_(8388608.0).view(torch.int32).sub_(0x4B000000)        # RNE(2|v|), |v| < 1
    rb = (ab >> 22).bitwise_and_(1).add_(ab).add_(0x1FFFFF - (252 << 22)).__irshift__(22)
    code = torch.where(small, qs, rb)
    code |= (vb >> 28).bitwise_and_(8)                                         # sign bit -> bit 3
    c8 = code.to(torch.uint8)
    if has_zero:
        c8.view(rows, nb, BLOCK).masked_fill_(zero.unsqueeze(-1), 0)
    if sys.byteorder != "little":
        return pack(c8), bs
    c16 = c8.view(torch.int16)            # little endian: low byte = even element -> high nibble
    packed = c16.bitwise_and(0xFF).__ilshift__(4).bitwise_or_(c16 >> 8).to(torch.uint8)
    return packed, bs


def dequantize(packed: torch.Tensor, block_scales: torch.Tensor, s2: torch.Tensor,
               shape: tuple[int, int] | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`quantize`; ``shape`` = the logical [N, K] (defaults to the padded shape)."""
    np_, kp = packed.shape[0], packed.shape[1] * 2
    if kp % BLOCK:
        raise ShapeError(f"packed width {packed.shape[1]} is not a whole number of 16-element blocks")
    vals = e2m1_decode(unpack(packed), torch.float32).reshape(np_, kp // BLOCK, BLOCK)
    bs = unswizzle(block_scales.view(torch.float8_e4m3fn) if block_scales.dtype == torch.uint8 else block_scales,
                   np_, kp // BLOCK).to(torch.float32)
    out = (vals * (bs * s2.to(torch.float32).reshape(())).unsqueeze(-1)).reshape(np_, kp)
    if shape is not None:
        out = out[: shape[0], : shape[1]]
    return out.to(dtype)
