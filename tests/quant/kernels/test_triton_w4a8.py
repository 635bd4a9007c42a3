"""The W4A8 Triton kernel (quant/kernels/triton_w4a8.py) under Triton's CPU interpreter, bytes against comfy-kitchen
0.2.40's eager reference (cases: tests/quant/kernels/interp_w4a8_cases.py, run in a fresh interpreter because Triton
decides interpretation when it is first imported)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_w4a8_kernel_under_the_cpu_interpreter_matches_kitchen_eager():
    pytest.importorskip("triton")
    pytest.importorskip("comfy_kitchen")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-x",
                        str(ROOT / "tests" / "quant" / "kernels" / "interp_w4a8_cases.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout and "skipped" not in r.stdout and "failed" not in r.stdout, r.stdout[-2000:]
