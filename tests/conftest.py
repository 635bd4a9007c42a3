import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def thin_wan5b(tmp_path_factory) -> Path:
    """Thin WAN 2.2 TI2V 5B (real names, in/out 48, head_dim 128, text_dim 4096), BF16, seeded."""
    from harness.fixtures.synth import make_model
    return make_model("wan22-ti2v-5b-thin", tmp_path_factory.mktemp("src") / "wan22_ti2v_5b_thin_bf16.safetensors",
                      seed=1, dtype=torch.bfloat16)


def run_cli(*args, timeout=300, cwd=None, env=None):
    """Run `quantgate ARGS` in a subprocess; returns CompletedProcess (text)."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("QUANTGATE_DEBUG", None)
    if env:
        e.update(env)
    return subprocess.run([sys.executable, "-m", "harness.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=e)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="session")
def quantgate_wheel(tmp_path_factory) -> Path:
    """The quantgate wheel, built once per session from a copy of the checkout (tests/_wheel.py)."""
    from tests._wheel import build_wheel
    return build_wheel(tmp_path_factory.mktemp("wheel"))
