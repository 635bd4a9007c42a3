"""The gate's reference conversion exists for every format quantgate writes (issue 21, item 2): for a
round-to-nearest file of each format its reference declares the same layers with the same kernels -- including
the layers a 4-bit format gives to its 8-bit sensitive kernel -- and holds the same quantized tensors. No server:
the renders of such a pair are identical by construction (they were: 1-SSIM equal for int8, int8-convrot, mxfp8,
w4a4-convrot and w4a8-int8 in one gate run, see notes-2026-12-07-issue21.md)."""
from __future__ import annotations

import pytest
import torch

from harness.render import reference
from quant import formats


@pytest.mark.parametrize("fmt", sorted(formats.TARGETS))
def test_reference_of_a_round_to_nearest_file_is_that_file(fmt, tmp_path, thin_source):
    from quant.convert import convert
    from quant.safetensors_io import SafetensorsFile
    cand = tmp_path / f"{fmt}.safetensors"
    convert(thin_source, cand, fmt, force=True)
    target, plan = reference.layer_plan(cand, thin_source)
    assert target == fmt and plan
    (tmp_path / "ref").mkdir()
    ref, _, _ = reference.make(cand, thin_source, tmp_path / "ref")
    assert reference.layer_plan(ref, thin_source) == (target, plan)
    with SafetensorsFile(cand) as a, SafetensorsFile(ref) as b:
        assert set(a.keys()) == set(b.keys())
        for k in a.keys():
            x, y = a.get(k), b.get(k)
            assert x.dtype == y.dtype and x.shape == y.shape, k
            assert torch.equal(x.reshape(-1).view(torch.uint8), y.reshape(-1).view(torch.uint8)), k
