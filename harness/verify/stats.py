"""Statistics without a source: plausibility of the stored numbers (NaN codes, use of the e4m3 range,
decoded magnitudes, block scales lining up with the data), per kernel family; the kitchen references
call them (``kitchen.*Reference.stats``) and ``numeric.statistics`` walks a file with them. The report
says that nothing was proven."""
from __future__ import annotations

import torch

from quant.kernels.common import E2M1_MAX, E4M3_MAX

from .findings import Findings

MAX_WEIGHT_AMAX = 200.0      # decoded |W| above this is not a trained Linear weight (unit/inverted scale)
RANGE_FRACTION = 1 / 16      # fp8 data whose max code is below 448/16 wastes >4 bits of range
MISALIGNED_FRACTION = 0.01   # nvfp4 blocks whose scale and codes disagree (zero vs non-zero)


def code_stats(codes_u8: torch.Tensor, counts: torch.Tensor | None = None) -> tuple[bool, float]:
    """(holds NaN codes, largest finite |value|) of e4m3 bytes, from a 256-bin histogram."""
    if not codes_u8.numel():
        return False, 0.0
    if counts is None:
        counts = torch.bincount(codes_u8.reshape(-1), minlength=256)
    mag = counts[:128] + counts[128:]
    nan = bool(mag[0x7F] > 0)
    nz = torch.nonzero(mag[:0x7F]).reshape(-1)
    top = int(nz[-1]) if nz.numel() else 0
    return nan, float(torch.tensor([top], dtype=torch.uint8).view(torch.float8_e4m3fn).float())


def fp8_stats(la, w, scale, f: Findings, counts=None):
    nan, top = code_stats(w.view(torch.uint8), counts)
    if nan:
        f.error("stats.nonfinite", "fp8 weight holds NaN codes (0x7F/0xFF): not e4m3fn data (e5m2 or garbage?)",
                [la.name])
    amax = top * float(scale)
    if amax > MAX_WEIGHT_AMAX:
        f.error("scale.magnitude", f"dequantized weights reach |W| > {MAX_WEIGHT_AMAX:g}: the scale is not the decode "
                                   f"multiplier amax/{la.spec.full_scale:g} (unit or inverted scale?)", [la.name])
    elif 0 < top < E4M3_MAX * RANGE_FRACTION:
        f.warning("stats.range", "fp8 weight uses less than 1/16 of the e4m3 range: its scale is too large "
                                 "(precision is wasted)", [la.name])
    elif top == 0:
        f.warning("stats.range", "fp8 weight is all zeros", [la.name])


def nvfp4_stats(la, w, s2, bs, f: Findings):
    b = bs.view(torch.uint8)
    nan, top = code_stats(b)
    if nan:
        f.error("stats.nonfinite", "nvfp4 block scales hold NaN codes", [la.name])
    if int(b.max()) > 0x80:
        f.error("scale.value", "nvfp4 block scales hold negative values", [la.name])
    amax = E2M1_MAX * top * float(s2)
    if amax > MAX_WEIGHT_AMAX:
        f.error("scale.magnitude", f"dequantized weights reach |W| > {MAX_WEIGHT_AMAX:g}: "
                                   f"{la.spec.decode_scale_key} is not the decode multiplier "
                                   f"amax/{la.spec.full_scale:g} (unit or inverted scale?)", [la.name])
    np_, kp = w.shape[0], w.shape[1] * 2
    c = kp // 16
    from quant.kernels import nvfp4 as nv
    logical = nv.unswizzle(b, np_, c)                    # layout only; numbers are proven with --source
    if w.is_contiguous() and w.shape[1] % 8 == 0:   # one 16-code block = 8 bytes = one int64
        nonzero_codes = (w.view(torch.int64) & 0x7777777777777777) != 0
    else:
        nonzero_codes = ((w & 0x77) != 0).reshape(np_, c, 8).any(-1)
    has_scale = (logical & 0x7F) != 0
    bad = int((nonzero_codes != has_scale).sum())
    if bad > MISALIGNED_FRACTION * max(1, np_ * c):
        f.error("stats.range", "nvfp4 block scales do not line up with the data (zero scales on non-zero blocks): "
                               "block scales not in the swizzled layout?", [la.name])
