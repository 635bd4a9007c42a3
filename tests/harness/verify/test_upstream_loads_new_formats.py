"""Upstream ComfyUI 0.33's OWN loader (its tree and its venv, ``./qg`` exports QUANTGATE_UPSTREAM_*) loads each
new-format file of the trained reference model with mixed-precision ops and no missing/unexpected keys, and the
weight every quantized Linear computes with (ComfyUI's ``weight.dequantize()``) is within the format's bound of
the source -- the same error quantgate's verify measured through comfy-kitchen."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from quant.convert import convert
from quant import formats

ROOT = Path(__file__).resolve().parents[3]
UPSTREAM = Path(os.environ.get("QUANTGATE_UPSTREAM_COMFY") or ROOT.parent / "shared" / "comfyui" / "ComfyUI")
TINY = ROOT / "harness" / "train" / "wan21-t2v-tiny.safetensors"
NEW = ("int8", "int8-convrot", "mxfp8", "w4a4-convrot", "w4a8-int8")


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    py = os.environ.get("QUANTGATE_UPSTREAM_PYTHON")
    assert (UPSTREAM / "main.py").is_file(), f"the upstream ComfyUI tree is missing at {UPSTREAM}"
    assert py, "run through ./qg test (it builds the upstream venv)"
    d = tmp_path_factory.mktemp("upstream")
    paths = {}
    for f in NEW:
        paths[f] = d / f"tiny-{f}.safetensors"
        convert(TINY, paths[f], f)
    r = subprocess.run([py, str(ROOT / "harness" / "verify" / "upstream_probe.py"), str(UPSTREAM), str(TINY),
                        *map(str, paths.values())], capture_output=True, text=True, timeout=900)
    line = next((x for x in r.stdout.splitlines() if x.startswith("QUANTGATE-PROBE ")), None)
    assert r.returncode == 0 and line, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(line[len("QUANTGATE-PROBE "):])
    return {f: (paths[f], res[str(paths[f])]) for f in NEW}


@pytest.mark.parametrize("fmt", NEW)
def test_upstream_loader_builds_every_quantized_linear(probe, fmt):
    import torch

    from harness.verify import verify
    from harness.verify.kitchen import open_kitchen, reference_for
    from quant.checkpoint import build
    from quant.sources import open_source
    path, got = probe[fmt]
    assert got["comfy_version"] == "0.33.0"
    assert got["mixed_precision"] and got["ops_line"], got
    assert got["missing"] == [] and got["unexpected"] == [], (got["missing"], got["unexpected"])
    assert verify(path, TINY, strict=True).passed
    with open_source(path) as src, open_source(TINY) as ref_src, open_kitchen() as ck:
        st = build(src)
        declared = {la.name: la for la in st.declared}
        assert set(got["layers"]) == set(declared), set(declared) ^ set(got["layers"])
        for name, la in declared.items():
            up = got["layers"][name]
            assert up["format"] == la.spec.comfy_format, (name, up)
            assert up["rel_error"] is not None and up["rel_error"] <= la.spec.max_rel_error, (name, up)
            # ComfyUI computes with the weight quantgate's verify decodes (kitchen 0.2.31 there, 0.2.40 here)
            kr = reference_for(la.spec)
            ref = ref_src.get(name + ".weight").to(torch.float32)
            n, k = ref.shape
            mine = kr.decode(ck, kr.load(st, la), n, k, la.conf)
            rel = float((mine - ref).norm() / ref.norm())
            assert abs(rel - up["rel_error"]) <= 1e-3 * rel + 1e-6, (name, rel, up["rel_error"])
