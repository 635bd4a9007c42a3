"""Compatibility name: the FP8 kernels live in :mod:`quant.kernels.fp8` (the eager backend's math)."""
from .kernels.fp8 import FP8_DTYPE, FP8_MAX, dequantize, quantize, weight_scale  # noqa: F401
from .kernels.common import amax_abs  # noqa: F401
