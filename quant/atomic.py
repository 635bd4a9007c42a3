"""Atomic small-file writes (presets, reports): temp file beside the target, fsync, rename, so the
file only ever appears complete; a failure leaves the old file (if any) untouched and no temp."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import QuantgateError


def write_bytes(path, data: bytes) -> Path:
    p = Path(path)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".partial", dir=p.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
        tmp = None
    except OSError as e:
        raise QuantgateError(f"writing the output failed: {e.strerror or e}", p) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    return p


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))
