"""The Triton kernels (quant/kernels/triton_quant.py) run by Triton's CPU interpreter: the same
kernel code as on the GPU, bit-exact with the eager reference (quant.kernels.fp8 / quant.kernels.nvfp4) for
round-to-nearest, dequantize included (hypothesis: random shapes, odd sizes, dtypes, ties, -0.0).
The interpreter mis-casts fp8 and truncates bf16, so it runs the kernels' integer-rounding path
(HW=False); tests/test_gpu_kernels.py checks both paths on CUDA.

Triton decides interpretation when it is first imported, so the cases (tests/quant/kernels/interp_triton_cases.py)
run in a fresh interpreter."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_triton_kernels_under_the_cpu_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
                        str(ROOT / "tests" / "quant" / "kernels" / "interp_triton_cases.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout and "failed" not in r.stdout, r.stdout[-2000:]
