"""Compatibility names for code written before the format registry: everything here now lives in
:mod:`quant.formats` (the format objects), :mod:`quant.formats.comfy` (ComfyUI facts) and
:mod:`quant.dtypes`. New code imports those."""
from __future__ import annotations

from .dtypes import DTYPE_BYTES, FLOAT_DTYPES, HIGH_PRECISION  # noqa: F401
from .formats import (BY_COMFY_FORMAT, COMFY_QUANT_SUFFIX, COMFY_VERSIONS, FORMAT_VERSION, FORMATS,  # noqa: F401
                      QUANT_ALGOS_SINCE, QUANT_METADATA_KEY, SHAPE_RULE_DOC, Companion, comfy_has,
                      comfy_quant_bytes, comfy_quant_config, describe, quantization_metadata, resolve_shape,
                      version_lt)
from .formats import Format as FormatSpec  # noqa: F401
from .kernels.facts import packed_shape as nvfp4_packed_shape  # noqa: F401
from .kernels.facts import rup  # noqa: F401
from .kernels.facts import scale_shape as nvfp4_scale_shape  # noqa: F401

FP8_LEGACY = FORMATS["fp8-legacy"]
FP8 = FORMATS["fp8"]
NVFP4 = FORMATS["nvfp4"]
