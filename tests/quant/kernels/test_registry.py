"""The kernel registry (quant.kernels.registry): a backend implements only the ops it declares, for the tensors
its ``Needs`` accept; every other call falls through to the next backend of the chain (eager), with the same bytes."""
from __future__ import annotations

import pytest
import torch

import quant.kernels as K
from quant.kernels import fp8 as _fp8
from quant.kernels.registry import Needs, NoKernel


class _Fast:
    """A planted fast backend: fp8 quantize of float32 2-D CPU tensors only (the eager math), counting its calls."""
    name = "planted-fast"
    priority = 5
    ops = {"quantize_fp8": Needs(devices=("cpu",), dtypes=(torch.float32,), dims=2)}

    def __init__(self):
        self.calls = 0

    def available(self, device="cpu"):
        return str(device).startswith("cpu")

    def quantize_fp8(self, w, scale=None, *, name=None, check_finite="sync"):
        self.calls += 1
        return _fp8.quantize(w, scale, name=name)


@pytest.fixture
def fast(monkeypatch):
    K._builtin()
    b = _Fast()
    monkeypatch.setitem(K._BACKENDS, b.name, b)
    return b


def test_calls_go_to_the_first_backend_that_takes_them(fast):
    ks = K.get_backend("cpu")
    assert ks.name == "planted-fast" and [b.name for b in ks.chain] == ["planted-fast", "eager"]
    w = torch.randn(64, 48)
    q, s = ks.quantize_fp8(w)
    assert fast.calls == 1
    for other in (w.to(torch.bfloat16), w.reshape(2, 32, 48)):          # dtype / dims it does not take: eager
        q2, s2 = ks.quantize_fp8(other)
        qe, se = _fp8.quantize(other)
        assert torch.equal(q2.view(torch.uint8), qe.view(torch.uint8)) and torch.equal(s2, se)
    assert fast.calls == 1
    d = ks.dequantize_fp8(q, s, torch.float32)                          # not implemented by it: eager
    assert torch.equal(d, _fp8.dequantize(q, s, torch.float32))
    assert "planted-fast: dtype torch.bfloat16" in ks.why_not("quantize_fp8", w.to(torch.bfloat16))


def test_optional_ops_without_a_taker(fast):
    ks = K.get_backend("cpu")
    w = torch.randn(8, 16)
    assert ks.quantize_int8_rowwise(w) is None                          # the format's own math serves
    with pytest.raises(NoKernel, match="quantize_fp8_async"):
        ks.quantize_fp8_async(w)
    assert not ks.implements("quantize_fp8_async", "quantize_nvfp4_async")


def test_a_forced_backend_keeps_only_lower_fallbacks(fast):
    with K.use_backend("eager"):
        ks = K.get_backend("cpu")
    assert [b.name for b in ks.chain] == ["eager"]
    ks.quantize_fp8(torch.randn(4, 4))
    assert fast.calls == 0
    assert [b.name for b in K.get_backend("cpu", "planted-fast").chain] == ["planted-fast", "eager"]


def test_register_refuses_what_a_backend_does_not_have():
    class NoMethod(_Fast):
        name = "broken"
        ops = {"quantize_nvfp4": Needs()}

    class Unknown(_Fast):
        name = "broken2"
        ops = {"quantize_fp4_magic": Needs()}
    with pytest.raises(TypeError, match="declared but missing quantize_nvfp4"):
        K.register(NoMethod)
    with pytest.raises(TypeError, match="unknown ops quantize_fp4_magic"):
        K.register(Unknown)
    assert "broken" not in K.names() and "broken2" not in K.names()


def test_the_builtin_chains():
    ks = K.get_backend("cpu")
    assert [b.name for b in ks.chain] == ["eager"]                     # triton never on a CPU
    tb = K.TritonBackend
    assert set(tb.ops) == set(K.OPS) and set(K.EagerBackend.ops) == {
        "quantize_fp8", "quantize_nvfp4", "dequantize_fp8", "dequantize_nvfp4"}


class _FastAsync(_Fast):
    """Planted no-sync fp8 op (float32 only): what the pipelined CUDA converter asks the seam for."""
    name = "planted-async"
    ops = {"quantize_fp8_async": Needs(dtypes=(torch.float32,))}

    def quantize_fp8_async(self, x, scale=None):
        self.calls += 1
        q, s = _fp8.quantize(x, scale)
        return q, s, x.abs().amax()


def test_the_pipeline_asks_the_seam_for_its_no_sync_kernels(monkeypatch):
    """pipeline._Gpu._kernels (run here on a CPU with a planted backend): the format's async path where a backend
    takes the tensor, the synchronous op (the same bytes) where none does."""
    from types import SimpleNamespace

    from quant import pipeline
    from quant.formats import FORMATS
    K._builtin()
    b = _FastAsync()
    monkeypatch.setitem(K._BACKENDS, b.name, b)
    ks = K.get_backend("cpu")
    fmt = FORMATS["fp8"]
    gpu = SimpleNamespace(fmt=fmt, be=ks, fast=ks.implements(*K.ASYNC_OPS))
    d = SimpleNamespace(action=fmt.kernel, name="w")
    w = torch.randn(32, 64)
    raw, amax = pipeline._Gpu._kernels(gpu, d, w)
    assert b.calls == 1 and float(amax) == float(w.abs().amax())
    raw2, amax2 = pipeline._Gpu._kernels(gpu, d, w.to(torch.bfloat16))       # not taken: the synchronous op
    assert b.calls == 1 and amax2 is None
    ref = fmt.quantize(w)
    assert raw.keys() == ref.keys() and all(torch.equal(raw[k].view(torch.uint8), ref[k].view(torch.uint8))
                                            if raw[k].dtype == torch.float8_e4m3fn else torch.equal(raw[k], ref[k])
                                            for k in ref)
