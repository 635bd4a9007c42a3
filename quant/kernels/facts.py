"""The number formats' own facts, without torch (the format registry and the CLI's light commands
import these; the kernels re-export them)."""
from __future__ import annotations

E4M3_MAX = 448.0             # largest finite float8_e4m3fn value
E2M1_MAX = 6.0               # largest E2M1 (fp4) magnitude
BLOCK = 16                   # NVFP4 elements per block scale


def rup(x: int, m: int) -> int:
    """x rounded up to a multiple of m."""
    return (x + m - 1) // m * m


def packed_shape(n: int, k: int) -> tuple[int, int]:
    """Shape of the U8 NVFP4 weight for a logical [n, k] Linear weight."""
    return rup(n, 16), rup(k, 16) // 2


def scale_shape(n: int, k: int) -> tuple[int, int]:
    """Shape of the swizzled F8_E4M3 block-scale tensor for a logical [n, k] weight."""
    return rup(rup(n, 16), 128), rup(rup(k, 16) // 16, 4)
