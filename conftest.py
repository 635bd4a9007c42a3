"""Root conftest: makes the checkout importable and registers quantgate's pytest plugins."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The gate plugins (options --checkpoint/--source/--comfy-url/..., fixtures) are loaded with -p in
# pyproject's addopts, so they also work when the paths given are outside the checkout.

import pytest  # noqa: E402


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config, machine_info):
    """Every benchmark record (./qg bench, the nightly -m gpu run) names the GPU, driver, torch, ComfyUI and
    quantgate commit it was measured with, beside pytest-benchmark's own machine and commit info."""
    from harness.nightly.info import machine_facts
    machine_info["quantgate"] = machine_facts()
