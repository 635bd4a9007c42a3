"""Atomic small-file writes (presets, reports): the same path as every quantgate output
(:mod:`quant.outputs`): never over an input or a special file, temp file beside the target, fsync,
rename, so the file only ever appears complete; a failure leaves the old file (if any) untouched."""
from __future__ import annotations

from pathlib import Path

from . import outputs


def write_bytes(path, data: bytes, inputs=()) -> Path:
    return outputs.write_bytes(path, data, inputs)


def write_text(path, text: str, inputs=()) -> Path:
    return outputs.write_text(path, text, inputs)
