"""Facts about the machine a benchmark/nightly record was measured on (pytest-benchmark machine_info)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        r = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def machine_facts() -> dict:
    import torch
    from quant import __version__
    out = {"quantgate_version": __version__, "quantgate_commit": _git_commit(), "torch": torch.__version__,
           "cuda": torch.version.cuda, "gpu": None, "gpu_count": 0, "driver": None, "comfyui_embedded": None}
    if torch.cuda.is_available():
        out.update(gpu=torch.cuda.get_device_name(0), gpu_count=torch.cuda.device_count(), driver=_driver(),
                   capability=".".join(map(str, torch.cuda.get_device_capability(0))))
    try:
        from harness.comfy.server import comfy_version, embedded_source
        out["comfyui_embedded"] = comfy_version(embedded_source())
    except Exception:
        pass
    return out
