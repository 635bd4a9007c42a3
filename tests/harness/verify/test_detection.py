"""The ``layer.detection`` rule reads what ComfyUI's model detection actually reads, per architecture, on
both ComfyUI versions quantgate renders with: the embedded 0.3.75 and the upstream 0.33 tree.

Each version's own ``comfy.model_detection.detect_unet_config`` runs (in a subprocess, on meta tensors of
the real-size layouts of ``quant.arch``) on the unquantized shapes and, one layer at a time, on the shapes an
NVFP4 file stores for that layer (packed K, N padded to 16). The layers whose NVFP4 packing changes the
detected config must be exactly the layers the rule fails."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness.verify.layout_rules import DETECTION_READS, detection_reads
from quant import arch
from quant.kernels.facts import packed_shape

SCRIPT = r"""
import json, sys
sys.argv = ["detect", "--cpu"]
import comfy.options
comfy.options.enable_args_parsing()
import torch
import comfy.model_detection as md
job = json.load(sys.stdin)
out = {}
for name, a in job.items():
    sd = {k: torch.empty(s, device="meta") for k, s in a["shapes"].items()}
    def conf(sd):
        c = md.detect_unet_config(sd, "")
        return json.dumps(c, sort_keys=True, default=str)
    base = conf(sd)
    changed = []
    for k, s in a["packed"].items():
        old = sd[k]
        sd[k] = torch.empty(s, device="meta")
        try:
            if conf(sd) != base:
                changed.append(k)
        except Exception as e:
            changed.append(k)
        sd[k] = old
    out[name] = {"config": json.loads(base), "changed": changed}
print("RESULT" + json.dumps(out))
"""

# one block per repeated stack is enough: detection reads block 0 and counts the others
_LATER_BLOCK = re.compile(r"(^|\.)(blocks|double_blocks|single_blocks|transformer_blocks)\.([1-9]\d*)\.")


def _job() -> dict:
    job = {}
    for name, a in arch.ARCHS.items():
        shapes = dict(a.tensors())
        packed = {k: list(packed_shape(s[0], s[1])) for k, s in shapes.items()
                  if len(s) == 2 and k.endswith(".weight") and not _LATER_BLOCK.search(k)}
        job[name] = {"family": a.family, "shapes": {k: list(s) for k, s in shapes.items()}, "packed": packed}
    return job


def _run(root: str, python: str, job: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=root)
    r = subprocess.run([python, "-c", SCRIPT], input=json.dumps(job), capture_output=True, text=True, cwd=root,
                       env=env, timeout=600)
    line = next((x for x in r.stdout.splitlines() if x.startswith("RESULT")), None)
    assert line, r.stderr[-3000:]
    return json.loads(line[len("RESULT"):])


def _versions():
    from harness.comfy.server import comfy_version, prepare_embedded
    from harness.render.matrix import upstream_checkout
    out = [(str(prepare_embedded()), sys.executable)]
    try:
        root, py = upstream_checkout()
    except Exception as e:          # noqa: BLE001 - no upstream tree on this machine
        pytest.skip(f"no upstream ComfyUI: {e}")
    out.append((root, py or sys.executable))
    return [(comfy_version(__import__("pathlib").Path(r)), r, p) for r, p in out]


@pytest.fixture(scope="module")
def detected():
    job = _job()
    vers = _versions()
    with ThreadPoolExecutor(len(vers)) as ex:
        res = list(ex.map(lambda v: _run(v[1], v[2], job), vers))
    return job, {v[0]: r for v, r in zip(vers, res)}


@pytest.mark.slow
def test_both_versions_were_run(detected):
    _, by_version = detected
    vs = sorted(by_version)
    assert any(v.startswith("0.3.") for v in vs) and any(not v.startswith("0.3.") for v in vs), vs


@pytest.mark.slow
def test_rule_fails_exactly_the_layers_whose_packing_changes_detection(detected):
    job, by_version = detected
    for version, res in by_version.items():
        for name, a in job.items():
            assert res[name]["config"], (version, name, "detection found nothing on the unquantized layout")
            changed = set(res[name]["changed"])
            flagged = set()
            for k, stored in a["packed"].items():
                logical = a["shapes"][k]
                dims = detection_reads(a["family"], k[: -len(".weight")])
                if any(stored[d] != logical[d] for d in dims):
                    flagged.add(k)
            assert flagged == changed, (version, name, sorted(flagged ^ changed))


@pytest.mark.slow
def test_wan_head_is_read_only_by_its_first_dimension(detected):
    """Issue 21's false failure: NVFP4 keeps head.head.weight.shape[0] (N = 4 x out_dim, a multiple of 16)."""
    job, by_version = detected
    for version, res in by_version.items():
        for name, a in job.items():
            if a["family"] == "wan":
                assert "head.head.weight" not in res[name]["changed"], (version, name)
                assert "head.head.weight" in a["packed"]
    assert DETECTION_READS["wan"]["head.head.weight"] == (0,)


@pytest.mark.slow
def test_flux_and_qwen_input_layers_are_read_by_k(detected):
    """Where detection reads K (in_channels / context dim), NVFP4 packing does mis-detect: the rule's errors
    are real on both versions."""
    _, by_version = detected
    for version, res in by_version.items():
        assert "img_in.weight" in res["qwen-image"]["changed"], version
        assert "img_in.weight" in res["flux1-dev"]["changed"], version
        assert "txt_in.weight" in res["flux1-dev"]["changed"], version


def test_verify_passes_nvfp4_wan_head_and_fails_nvfp4_qwen_img_in(tmp_path):
    """End to end through verify: WAN's head.head in NVFP4 is no detection error (an info naming the one
    dimension read), Qwen-Image's img_in in NVFP4 is."""
    import torch

    from harness.fixtures.planted import format_defects as fd
    from harness.fixtures.synth import make_model
    from harness.verify import verify
    from quant.convert import convert
    srcs = fd.make_sources(tmp_path)
    t, m = fd.load(srcs["nvfp4"])
    t, m = fd.nvfp4_detection_layer(t, m)
    wan = fd.save(t, m, tmp_path / "wan-head-nvfp4.safetensors")
    rep = verify(wan, srcs["src"])
    det = [f for f in rep.findings.all() if f.rule == "layer.detection"]
    assert det and all(f.severity == "info" for f in det), rep.lines()

    q = make_model("qwen-image-thin", tmp_path / "qwen.safetensors", seed=1, dtype=torch.bfloat16)
    good = tmp_path / "qwen-nvfp4.safetensors"
    convert(q, good, "nvfp4")
    t, m = fd.load(good)
    w = t["img_in.weight"].float()
    from quant.kernels import nvfp4 as nv
    t["img_in.weight"], t["img_in.weight_scale"], t["img_in.weight_scale_2"] = nv.quantize(w)
    t["img_in.comfy_quant"] = fd.comfy_quant_tensor({"format": "nvfp4"})
    qm = fd.qmeta(m)
    qm["layers"]["img_in"] = {"format": "nvfp4"}
    bad = fd.save(t, fd.set_qmeta(m, qm), tmp_path / "qwen-img_in-nvfp4.safetensors")
    rep = verify(bad, q)
    assert "layer.detection" in {f.rule for f in rep.findings.all() if f.severity == "error"}, rep.lines()
