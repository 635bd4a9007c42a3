"""A FIFO given as any input kind is refused at once, one line naming it, exit 2 -- never a blocked open()
(issue 20: `convert --calibration FIFO` blocked forever). Each loader runs in its own process with a deadline,
so a loader that blocks fails the test instead of hanging the suite."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LOADERS = {
    "activation statistics": "from quant.activations.statistics import load; load(P)",
    "input scales": "from quant.convert import load_input_scales; load_input_scales(P)",
    "activation samples": "from quant.activations.samples import ActivationSamples; ActivationSamples(P, 16, 0)",
    "preset": "from quant.presets import load; load(P)",
    "policy": "from harness.render.gate import load_policy; load_policy(P)",
    "workflow": "from quant.inputs import workflow_json; workflow_json(P)",
    "nightly record": "from harness.nightly.records import load; load(P)",
    "manifest": "from quant.inputs import manifest_json; manifest_json(P)",
    "safetensors index": "from quant.sources import open_source; open_source(P)",
    "gate record": "from harness.card.record import _load; from pathlib import Path; _load(Path(P))",
}
SUFFIX = {"activation samples": ".safetensors", "preset": ".toml", "policy": ".toml",
          "safetensors index": ".safetensors.index.json"}


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_a_fifo_as_input_is_refused_at_once(kind, tmp_path):
    fifo = tmp_path / ("input" + SUFFIX.get(kind, ".json"))
    os.mkfifo(fifo)
    code = ("import sys\nfrom quant.errors import QuantgateError\nP = sys.argv[1]\ntry:\n    "
            + LOADERS[kind] + "\nexcept QuantgateError as e:\n    print(e.exit_code, e)\nelse:\n    print('accepted')\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        r = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=60,
                           env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the {kind} loader blocked on a FIFO")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip()
    assert out.startswith("2 ") and str(fifo) in out and "\n" not in out, out
    assert fifo.is_fifo()
