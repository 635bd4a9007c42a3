"""Activation files: recorded ``<layer>.input`` rows for learned rounding (``convert --rounding learned
--calibration acts.safetensors`` / ``--act-samples``). The safetensors header is validated by quantgate's
own parser (never a pickle); this loader adds what the activations must be: float tensors quantgate
computes with (F16/BF16/F32 -- float8 or integer "activations" are refused by name), at least one row of
at least one input feature, and a bounded count of elements."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError, short

SUFFIX = ".input"
FLOATS = ("F16", "BF16", "F32")
MAX_ELEMENTS = 1 << 36


def activation_samples(path):
    """-> an open :class:`quant.safetensors_io.SafetensorsFile` whose ``<layer>.input`` tensors are all
    usable activations; the caller closes it."""
    from .. import safetensors_io
    p = Path(path)
    if p.suffix.lower() == ".json":
        raise InputError("learned rounding needs recorded activations (a .safetensors file of "
                         "'<layer>.input' tensors), not a JSON of statistics", p)
    f = safetensors_io.SafetensorsFile(p)
    try:
        names = [k for k in f.keys() if k.endswith(SUFFIX)]
        if not names:
            raise InputError(f"no '<layer>{SUFFIX}' activation tensors in the activations file", p)
        for k in names:
            info = f.info(k)
            if info.dtype not in FLOATS:
                raise InputError(f"activations {short(k)} are {info.dtype}; recorded activations must be "
                                 f"{'/'.join(FLOATS)}", p)
            if len(info.shape) < 2 or info.shape[-1] < 1:
                raise InputError(f"activations {short(k)} have shape {list(info.shape)[:8]}; expected "
                                 "[rows, in_features] (or [..., in_features])", p)
            n = 1
            for d in info.shape:
                n *= d
            if n == 0:
                raise InputError(f"activations {short(k)} have no rows", p)
            if n > MAX_ELEMENTS:
                raise InputError(f"activations {short(k)} hold {n:,} elements; at most {MAX_ELEMENTS:,}", p)
    except BaseException:
        f.close()
        raise
    return f
