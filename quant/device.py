"""Where the quantize step runs: a :class:`Device` ("cpu", "cuda" or "cuda:N"), asked instead of its
name being tested as text."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import DeviceError


@dataclass(frozen=True)
class Device:
    name: str = "cpu"

    @classmethod
    def of(cls, device) -> "Device":
        return device if isinstance(device, Device) else cls(str(device))

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda")

    def check(self, workers: int = 1) -> None:
        """:class:`DeviceError` when a CUDA device is asked for and none (or fewer than ``workers``) is there."""
        if not self.is_cuda:
            return
        import torch
        if not torch.cuda.is_available():
            raise DeviceError(f"device {self.name!r} requested but no CUDA device is available")
        if workers > torch.cuda.device_count():
            raise DeviceError(f"{workers} CUDA workers requested: only {torch.cuda.device_count()} CUDA devices are visible")

    def __str__(self) -> str:
        return self.name
