"""A checkpoint written by the peer tool convert_to_quant (fp8, --comfy_quant
--full_precision_matrix_mult --simple) passes the gate, numerically proven against its source."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.fixtures import synth
from harness.verify import verify

pytest.importorskip("convert_to_quant")


@pytest.mark.slow
def test_convert_to_quant_fp8_passes(tmp_path):
    src = synth.make_model("wan22-ti2v-5b-thin", tmp_path / "src.safetensors", seed=11)
    out = tmp_path / "ctq.safetensors"
    code = ("import sys; from convert_to_quant.convert_to_quant import main; sys.argv = ['convert_to_quant', "
            f"'-i', {str(src)!r}, '-o', {str(out)!r}, '--comfy_quant', '--full_precision_matrix_mult', '--simple', "
            "'--device', 'cpu', '--save-quant-metadata', '--verbose', 'MINIMAL']; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and out.exists(), r.stderr[-2000:]
    rep = verify(out, src)
    assert rep.passed, rep.lines()
    assert rep.layers.get("fp8", 0) >= 20 and rep.mode == "numeric"
    # it quantizes head.head (a layer Wan detection reads): fp8 keeps the shape, so only a warning
    assert {f.rule for f in rep.findings.all() if f.severity == "warning"} <= {"layer.detection"}
    assert not rep.findings.rules("error")
    assert verify(out, header_only=True).passed
    # its comfy_quant JSON carries extra keys (orig_dtype) that ComfyUI ignores: still consistent carriers
    assert "carrier.disagree" not in rep.findings.rules()
    assert json.loads(json.dumps(rep.as_dict()))["passed"] is True
