"""Rounding-lever benchmarks (issue 25; pytest-benchmark, `./qg bench benchmarks/test_bench_rounding.py`, JSON saved):
seconds per layer on the CPU, one torch thread, of round-to-nearest, the NVFP4 scale search (mse / output) and
GPTQ (NVFP4 with the output scale search; FP8) on a 1024 x 1024 bf16 layer with 4096 activation rows -- what
`convert --rounding gptq --scale-search output` costs beside plain RTN. The GPU numbers (real-size 14B Linears,
A14B expert) come from benchmarks/fidelity_gpu.py, one run on the GPU box."""
import pytest
import torch

from harness.fixtures.synthetic_activations import activations
from quant.kernels import fp8 as _fp8
from quant.kernels import nvfp4 as _nv
from quant.rounding import gptq, scale_search

pytestmark = pytest.mark.bench
N = K = 1024


@pytest.fixture(scope="module")
def layer():
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(N, K, generator=g) / K ** 0.5).to(torch.bfloat16)
    x = activations(K, seed=1)(4096)
    return w, x.T @ x / x.shape[0]


METHODS = {
    "nvfp4 rtn": lambda w, h: _nv.quantize(w),
    "nvfp4 scale search mse": lambda w, h: scale_search.quantize(w),
    "nvfp4 scale search output": lambda w, h: scale_search.quantize(w, h=h, objective="output"),
    "nvfp4 gptq + output scale search": lambda w, h: gptq.quantize("nvfp4", w, h),
    "fp8 rtn": lambda w, h: _fp8.quantize(w),
    "fp8 gptq": lambda w, h: gptq.quantize("fp8", w, h),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_bench_rounding_cpu(benchmark, layer, method):
    w, h = layer
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = benchmark.pedantic(METHODS[method], args=(w, h), rounds=3, warmup_rounds=1)
    finally:
        torch.set_num_threads(before)
    assert all(bool(torch.isfinite(t.float()).all()) for t in out)
    benchmark.extra_info.update(shape=[N, K], rows=4096, threads=1)
