"""An unchecked format is an error, never a silent PASS (issue 24's false-PASS class).

A file in a ComfyUI format quantgate cannot decode with every weight negated and every scale x10 used to pass ``verify --source`` with exit 0 and a
summary claiming "every layer dequantized by comfy-kitchen" (int8_tensorwise, before quantgate decoded it; the
per-format destroyed-file tests in test_new_formats_verify.py own that case now). Here the format is ``float8_e5m2``, a
ComfyUI format (QUANT_ALGOS since 0.8.0) quantgate has no format object for. Now it fails (``format.unchecked`` and
``numeric.unchecked``); ``--allow-unchecked`` accepts it only with a summary that says how many layers were NOT
checked.
"""
from __future__ import annotations

import json

import pytest
import torch

from harness.fixtures.planted.format_defects import load, save
from harness.verify import verify

LAYERS = ("blocks.0.ffn.0", "blocks.0.ffn.2")


def _e5m2(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A valid ComfyUI ``float8_e5m2`` layer: per-tensor scale amax/57344 (a format quantgate cannot decode)."""
    scale = (w.float().abs().amax() / torch.finfo(torch.float8_e5m2).max).reshape(())
    return (w.float() / scale).to(torch.float8_e5m2), scale


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("unchecked")
    g = torch.Generator().manual_seed(5)
    src_t = {}
    for i, name in enumerate(LAYERS):
        shape = (64, 32) if i == 0 else (32, 64)
        src_t[f"{name}.weight"] = (torch.randn(*shape, generator=g) * 0.05).to(torch.bfloat16)
        src_t[f"{name}.bias"] = torch.zeros(shape[0], dtype=torch.bfloat16)
    src = save(src_t, {}, d / "src.safetensors")
    out = {"src": src}
    for variant in ("intact", "destroyed"):
        t, layers = {}, {}
        for name in LAYERS:
            q, scale = _e5m2(src_t[f"{name}.weight"])
            if variant == "destroyed":
                q, scale = (-q.float()).to(q.dtype), scale * 10
            conf = {"format": "float8_e5m2"}
            t[f"{name}.weight"] = q.contiguous()
            t[f"{name}.weight_scale"] = scale
            t[f"{name}.comfy_quant"] = torch.tensor(list(json.dumps(conf).encode()), dtype=torch.uint8)
            t[f"{name}.bias"] = src_t[f"{name}.bias"]
            layers[name] = conf
        meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
        out[variant] = save(t, meta, d / f"e5m2_{variant}.safetensors")
    return out


def _errors(rep):
    return {f.rule for f in rep.findings.all() if f.severity == "error"}


@pytest.mark.parametrize("variant", ["intact", "destroyed"])
def test_unchecked_format_fails_verify(files, variant):
    rep = verify(files[variant], files["src"])
    if rep.coverage and rep.coverage["unchecked"] == []:
        pytest.fail("quantgate now decodes float8_e5m2: this test's premise (an undecodable format) is gone; "
                    "pick another format it cannot decode")
    assert not rep.passed and rep.exit_code == 1
    assert {"format.unchecked", "numeric.unchecked"} <= _errors(rep), [f.line() for f in rep.findings.all()]
    assert "every layer" not in rep.summary_line()
    assert "0 of 2 quantized layers" in rep.summary_line() and "NOT checked" in rep.summary_line()


def test_allow_unchecked_says_what_was_not_checked(files):
    rep = verify(files["destroyed"], files["src"], allow_unchecked=True)
    if rep.coverage and rep.coverage["unchecked"] == []:
        pytest.fail("float8_e5m2 is decoded now: pick another format quantgate cannot decode")
    assert rep.passed            # explicitly allowed ...
    line = rep.summary_line()
    assert "2 quantized layers NOT checked" in line and "every layer" not in line, line   # ... and said plainly
    assert rep.as_dict()["coverage"]["unchecked"] == sorted(LAYERS) or set(rep.as_dict()["coverage"]["unchecked"]) == set(LAYERS)


def test_unchecked_fails_without_source_too(files):
    """The statistics and header-only modes cannot decode it either: still an error."""
    for kw in ({}, {"header_only": True}):
        rep = verify(files["destroyed"], **kw)
        assert "format.unchecked" in _errors(rep), kw


def test_cli_exit_codes(files, cli):
    r = cli("verify", files["destroyed"], "--source", files["src"])
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NOT checked" in r.stdout and "Traceback" not in r.stderr
    r = cli("verify", files["destroyed"], "--source", files["src"], "--allow-unchecked")
    assert r.returncode == 0 and "NOT checked" in r.stdout, r.stdout + r.stderr
