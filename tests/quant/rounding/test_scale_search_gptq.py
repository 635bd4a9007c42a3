"""NVFP4 scale search and GPTQ rounding (quant/rounding/scale_search.py, gptq.py) as pure tensor functions:
the file stays standard (comfy-kitchen decodes every value to ours), the search reproduces RTN's bytes when
it may only pick RTN's code, never does worse than RTN on its own objective, and GPTQ lowers the output error
on held-out activations. Numbers come from seeded data in the test, not from stored results."""
import comfy_kitchen as ck
import pytest
import torch

from harness.fixtures.synthetic_activations import activations
from quant.kernels import fp8 as _fp8
from quant.kernels import nvfp4 as _nv
from quant.rounding import gptq, scale_search


def _weight(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k ** 0.5
    w[:, torch.randperm(k, generator=g)[: max(1, k // 32)]] *= 12.0
    return w.to(torch.bfloat16)


def _kitchen_decode(t, shape):
    p, bs, s2 = t
    with ck.use_backend("eager"):
        return ck.dequantize_nvfp4(p, s2, bs, output_type=torch.float32)[: shape[0], : shape[1]]


def _out_err(w, wq, x):
    return float((x @ (wq.float() - w.float()).T).double().pow(2).sum())


@pytest.mark.parametrize("shape", [(64, 128), (33, 50), (128, 16)])
def test_search_limited_to_the_rtn_code_writes_rtn_bytes(shape):
    w = _weight(*shape, seed=sum(shape))
    a = _nv.quantize(w)
    b = scale_search.quantize(w, offsets=(0,), global_factors=(1.0,))
    assert torch.equal(a[0], b[0])
    assert torch.equal(a[1].view(torch.uint8), b[1].view(torch.uint8))
    assert torch.equal(a[2], b[2])


@pytest.mark.parametrize("shape", [(96, 160), (33, 50)])
def test_search_lowers_weight_error_and_kitchen_decodes_it(shape):
    w = _weight(*shape, seed=7)
    wf = w.float()
    rtn = _nv.dequantize(*_nv.quantize(w), shape=shape)
    t = scale_search.quantize(w, global_factors=scale_search.GLOBAL_FACTORS)
    d = _nv.dequantize(*t, shape=shape)
    assert torch.equal(d, _kitchen_decode(t, shape))               # a standard file: kitchen reads our values
    bs = t[1].float()
    assert bool(torch.isfinite(bs).all()) and bool((bs >= 0).all())
    e_rtn, e = float((rtn - wf).pow(2).sum()), float((d - wf).pow(2).sum())
    assert e < e_rtn
    # at RTN's global scale, per block never worse than RTN's code (ties keep RTN)
    d = _nv.dequantize(*scale_search.quantize(w, global_factors=(1.0,)), shape=shape)
    blocks = lambda m: torch.nn.functional.pad(m, (0, -shape[1] % 16)).reshape(shape[0], -1, 16)  # noqa: E731
    eb = (blocks(d) - blocks(wf)).pow(2).sum(-1)
    eb_rtn = (blocks(rtn) - blocks(wf)).pow(2).sum(-1)
    assert bool((eb <= eb_rtn * (1 + 1e-6) + 1e-12).all())


def test_output_objective_lowers_held_out_output_error():
    n, k = 128, 256
    w = _weight(n, k, seed=3)
    draw = activations(k, seed=11)
    x, held = draw(1024), draw(1024)
    h = x.T @ x / x.shape[0]
    rtn = _nv.dequantize(*_nv.quantize(w), shape=(n, k))
    t = scale_search.quantize(w, h=h, objective="output")
    d = _nv.dequantize(*t, shape=(n, k))
    assert torch.equal(d, _kitchen_decode(t, (n, k)))
    assert _out_err(w, d, held) < 0.8 * _out_err(w, rtn, held)


@pytest.mark.parametrize("action", ["nvfp4", "fp8"])
def test_gptq_lowers_held_out_output_error_and_stays_on_the_grid(action):
    n, k = 96, 192
    w = _weight(n, k, seed=5)
    draw = activations(k, seed=21)
    x, held = draw(1024), draw(1024)
    h = x.T @ x / x.shape[0]
    t = gptq.quantize(action, w, h)
    if action == "fp8":
        q, s = t
        assert q.dtype == torch.float8_e4m3fn and bool(torch.isfinite(q.float()).all())
        assert torch.equal(s, _fp8.weight_scale(w))                   # RTN's scale
        d, rtn = _fp8.dequantize(q, s), _fp8.dequantize(*_fp8.quantize(w))
        with ck.use_backend("eager"):
            assert torch.equal(d, ck.dequantize_per_tensor_fp8(q, s, output_type=torch.float32))
    else:
        d, rtn = _nv.dequantize(*t, shape=(n, k)), _nv.dequantize(*_nv.quantize(w), shape=(n, k))
        assert torch.equal(d, _kitchen_decode(t, (n, k)))
        assert torch.equal(t[2], _nv.global_scale(w))                 # RTN's global scale
    assert _out_err(w, d, held) < 0.7 * _out_err(w, rtn, held)


def test_gptq_batch_equals_one_layer_at_a_time_and_handles_dead_inputs():
    n, k = 48, 64
    ws = [_weight(n, k, seed=s) for s in (1, 2)]
    hs = []
    for s in (1, 2):
        x = activations(k, seed=30 + s)(256)
        x[:, 5] = 0                                                   # an input no activation reaches
        hs.append(x.T @ x / x.shape[0])
    for action in ("nvfp4", "fp8"):
        batch = gptq.quantize_batch(action, torch.stack(ws), torch.stack(hs))
        for w, h, tb in zip(ws, hs, batch):
            ts = gptq.quantize(action, w, h)
            for a, b in zip(ts, tb):
                assert torch.equal(a.view(torch.uint8) if a.element_size() == 1 else a,
                                   b.view(torch.uint8) if b.element_size() == 1 else b)
            assert all(bool(torch.isfinite(v.float()).all()) for v in tb)


def test_gptq_without_error_feedback_is_round_to_nearest():
    """A diagonal H gives GPTQ nothing to feed the error into: it must write RTN's bytes (RTN block scales)."""
    n, k = 40, 80
    w = _weight(n, k, seed=9)
    h = torch.diag(torch.rand(k) + 0.5)
    t = gptq.quantize("nvfp4", w, h, gptq.GptqConfig(scale_search=None))
    r = _nv.quantize(w)
    assert torch.equal(t[0], r[0]) and torch.equal(t[1].view(torch.uint8), r[1].view(torch.uint8))
    q8, _ = gptq.quantize("fp8", w, h)
    assert torch.equal(q8.view(torch.uint8), _fp8.quantize(w)[0].view(torch.uint8))
