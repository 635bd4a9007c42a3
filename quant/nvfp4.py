"""Compatibility name: the NVFP4 kernels live in :mod:`quant.kernels.nvfp4` (the eager backend's math)."""
from .kernels.common import amax_abs, rup  # noqa: F401
from .kernels.nvfp4 import (BLOCK, CHUNK_ELEMS, E2M1_VALUES, FP4_MAX, FP8_MAX, dequantize, e2m1_decode,  # noqa: F401
                            e2m1_encode, global_scale, pack, packed_shape, quantize, scale_shape, swizzle, unpack,
                            unswizzle)
