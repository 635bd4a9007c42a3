"""Reading tensors: :class:`SafetensorsFile` reads one tensor at a time (``pread``) from a file whose
header :func:`~.header.read_header` validated, so peak memory is one tensor; :func:`decode_floats`
reads small float tensors without torch."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from ..errors import InputError, short
from .header import TensorInfo, read_header, torch_dtypes


class SafetensorsFile:
    """Random access to the tensors of one validated file, one tensor in memory at a time."""

    def __init__(self, path):
        self.path = Path(path)
        self.header = read_header(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    @property
    def metadata(self) -> dict[str, str]:
        return self.header.metadata

    def keys(self):
        return list(self.header.tensors)

    def info(self, name: str) -> TensorInfo:
        return self.header.tensors[name]

    def _read_into(self, name: str, mv: memoryview) -> None:
        ti = self.header.tensors[name]
        self.pread_into(ti.begin, mv[:ti.nbytes], name)

    def pread_into(self, begin: int, mv: memoryview, name: str | None = None) -> None:
        """Fill ``mv`` from file offset ``begin`` (os.preadv: no shared file position, any thread)."""
        got, total = 0, len(mv)
        while got < total:
            n = os.preadv(self._fd, [mv[got:]], begin + got)
            if n <= 0:
                what = f"tensor {short(name)}: " if name else ""
                raise InputError(f"{what}file ended while reading (truncated?)", self.path)
            got += n

    def raw(self, name: str) -> bytearray:
        buf = bytearray(self.header.tensors[name].nbytes)
        self._read_into(name, memoryview(buf))
        return buf

    def get(self, name: str) -> torch.Tensor:
        ti = self.header.tensors[name]
        import torch
        dt = torch_dtypes()[ti.dtype]
        if ti.nbytes == 0:
            return torch.empty(ti.shape, dtype=dt)
        t = torch.empty(ti.nbytes, dtype=torch.uint8)      # no zero-fill: the read overwrites it all
        self._read_into(name, memoryview(t.numpy()).cast("B"))
        return t.view(dt).reshape(ti.shape)


def decode_floats(dtype: str, raw: bytes) -> list[float] | None:
    """Little-endian F32/F64/F16/BF16 bytes as Python floats without torch; None for other dtypes."""
    if dtype == "F32":
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if dtype == "F64":
        return list(struct.unpack(f"<{len(raw) // 8}d", raw))
    if dtype == "F16":
        return list(struct.unpack(f"<{len(raw) // 2}e", raw))
    if dtype == "BF16":
        hs = struct.unpack(f"<{len(raw) // 2}H", raw)
        return list(struct.unpack(f"<{len(hs)}f", struct.pack(f"<{len(hs)}I", *(h << 16 for h in hs))))
    return None
