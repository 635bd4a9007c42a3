"""--budget-bits allocation (quant/budget.py): respects the budget, spends it where the measured error per
byte is largest, and explains each choice."""
import pytest
import torch

from harness.fixtures.synthetic_activations import activations
from quant import budget


def _choices(metric="output"):
    g = torch.Generator().manual_seed(0)
    shapes = {"a": (128, 128), "b": (256, 64), "c": (128, 64), "d": (128, 256)}
    ws = {}
    for i, (name, s) in enumerate(shapes.items()):
        ws[name + ".weight"] = (torch.randn(s, generator=g) * (0.02 if name != "b" else 0.2)).to(torch.bfloat16)
    rows = {n[:-7]: activations(w.shape[1], seed=3)(256) for n, w in ws.items()}
    layers = [(n, n[:-7], tuple(w.shape)) for n, w in ws.items()]
    return budget.measure(layers, lambda n: ws[n], rows=rows.get if metric == "output" else None, metric=metric)


def _bits(choices):
    return 8.0 * sum(c.bytes[c.action] for c in choices) / sum(c.numel for c in choices)


@pytest.mark.parametrize("metric", ["output", "weight"])
def test_budget_is_respected_and_more_budget_never_costs_error(metric):
    prev = None
    for b in (4.51, 5.5, 6.5, 8.0, 12.0, 16.0):   # 4.5 bits + the 4-byte global scales
        al = budget.allocate(_choices(metric), b, metric)
        assert al.bits_per_weight <= b + 1e-9
        err = sum(c.err[c.action] for c in al.choices)
        if prev is not None:
            assert err <= prev + 1e-12
        prev = err
        assert all(c.reason.startswith(f"--budget-bits {b:g}") for c in al.choices)
    assert al.counts() == {"keep": 4}                        # 16 bits: everything in source precision (bf16)
    assert budget.allocate(_choices(metric), 4.51, metric).counts() == {"nvfp4": 4}


def test_the_first_upgrade_goes_to_the_layer_with_the_most_error_per_byte():
    ch = _choices("weight")
    # layer b holds 10x larger weights: its NVFP4 error dominates; a budget for one fp8 layer goes there
    al = budget.allocate(ch, 5.5, "weight")
    assert {c.layer: c.action for c in al.choices}["b"] != "nvfp4"
    assert al.bits_per_weight <= 5.5


def test_budget_below_nvfp4_is_refused():
    with pytest.raises(ValueError, match="below NVFP4"):
        budget.allocate(_choices("weight"), 4.0, "weight")


def test_stored_bytes_match_the_formats():
    assert budget.stored_bytes("nvfp4", (128, 128), 2) == 128 * 64 + 128 * 8 + 4
    assert budget.stored_bytes("fp8", (128, 128), 2) == 128 * 128 + 4
    assert budget.stored_bytes("keep", (128, 128), 2) == 128 * 128 * 2
