"""The Triton kernels and the pipelined converter on CUDA (GPU box: `pytest -m gpu tests/test_gpu_kernels.py`).

* round-to-nearest bit-exact with the eager reference on the CPU (hypothesis: random shapes with odd
  sizes, bf16/fp16/fp32, magnitudes, E2M1 ties, -0.0), for the hardware fp8 casts and the integer
  rounding path the CPU interpreter test uses; dequantize kernels too;
* the pipelined converter on CUDA writes the same bytes as the serial CPU loop;
* non-finite weights end in the one-line InputError, through the backend op and the pipeline.
"""
import hashlib

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant.kernels import fp8, nvfp4
from quant.errors import InputError

pytestmark = pytest.mark.gpu
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tq():
    from quant.kernels import triton_quant
    assert triton_quant.available("cuda"), "triton backend unavailable on this GPU"
    return triton_quant


def _u8(t):
    return t.view(torch.uint8) if t.element_size() == 1 else t


@st.composite
def weights(draw):
    n, k = draw(st.integers(1, 1100)), draw(st.integers(1, 1100))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    mag = draw(st.sampled_from([1e-6, 1e-3, 0.05, 1.0, 300.0, 3e4]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["normal", "outliers", "zeros", "negzero", "ties"]))
    x = torch.randn(n, k, generator=g) * mag
    if kind == "outliers":
        x[:, torch.randint(0, k, (max(1, k // 50),), generator=g)] *= 40
    elif kind == "zeros":
        x[: n // 2] = 0
    elif kind == "negzero":
        x[x.abs() < mag] = -0.0
    elif kind == "ties":
        x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])[torch.randint(0, 8, (n, k), generator=g)]
        x = x * torch.sign(torch.randn(n, k, generator=g)) * mag
    return x.clamp(-6e4, 6e4).to(dtype)


@cuda
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(x=weights(), hw=st.booleans(), enc=st.sampled_from([0, 1]), fastdiv=st.sampled_from([0, 1]))
def test_triton_bit_exact_with_eager_cpu(tq, x, hw, enc, fastdiv):
    tq.CFG["nv_enc"], tq.CFG["nv_fastdiv"] = enc, fastdiv
    xc = x.cuda()
    n, k = x.shape
    q, s = fp8.quantize(x)
    q2, s2_, amax = tq.quantize_fp8_async(xc, hw=hw)
    assert torch.equal(_u8(q), _u8(q2).cpu()) and torch.equal(s, s2_.cpu())
    p, bs, s2 = nvfp4.quantize(x)
    p2, bs2, s22, _ = tq.quantize_nvfp4_async(xc, hw=hw)
    assert torch.equal(p, p2.cpu()) and torch.equal(_u8(bs), _u8(bs2).cpu()) and torch.equal(s2, s22.cpu())
    assert torch.equal(tq.dequantize_fp8(q2, s2_, x.dtype, hw=hw).cpu(), fp8.dequantize(q, s, x.dtype))
    assert torch.equal(tq.dequantize_nvfp4(p2, bs2, s22, n, k, x.dtype, hw=hw).cpu(),
                       nvfp4.dequantize(p, bs, s2, (n, k), x.dtype))


@cuda
@pytest.mark.parametrize("shape,dtype", [((14336, 5120), torch.bfloat16), ((3072, 3072), torch.float32),
                                         ((5120, 14336), torch.float16), ((4097, 1000), torch.bfloat16)])
@pytest.mark.parametrize("fastdiv", [0, 1])
def test_triton_bit_exact_on_real_sizes(tq, shape, dtype, fastdiv):
    tq.CFG["nv_fastdiv"] = fastdiv
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 0.02).to(dtype)
    x[:, :7] *= 30                                   # outlier channels
    q, s = fp8.quantize(x)
    q2, s2_, _ = tq.quantize_fp8_async(x.cuda())
    assert torch.equal(_u8(q), _u8(q2).cpu()) and torch.equal(s, s2_.cpu())
    p, bs, s2 = nvfp4.quantize(x)
    p2, bs2, s22, _ = tq.quantize_nvfp4_async(x.cuda())
    assert torch.equal(p, p2.cpu()) and torch.equal(_u8(bs), _u8(bs2).cpu()) and torch.equal(s2, s22.cpu())


@cuda
def test_backend_ops_signatures_and_non_finite(tq):
    from quant.kernels.triton_backend import BACKEND
    assert BACKEND.available("cuda") and not BACKEND.available("cpu")
    x = torch.randn(300, 200, device="cuda", dtype=torch.bfloat16)
    q, s = BACKEND.quantize_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == () and s.dtype == torch.float32
    p, bs, s2 = BACKEND.quantize_nvfp4(x)
    assert p.shape == nvfp4.packed_shape(300, 200) and bs.shape == nvfp4.scale_shape(300, 200)
    g = nvfp4.global_scale(x) * 3
    p3, bs3, s23 = BACKEND.quantize_nvfp4(x, g)
    pe, bse, _ = nvfp4.quantize(x.cpu(), g.cpu())
    assert torch.equal(p3.cpu(), pe) and torch.equal(_u8(bs3).cpu(), _u8(bse)) and torch.equal(s23.cpu(), g.cpu())
    d = BACKEND.dequantize_nvfp4(p, bs.view(torch.uint8), s2, 300, 200, torch.float32)
    assert d.shape == (300, 200) and float((d - x.float()).norm() / x.float().norm()) < 0.15
    x[1, 2] = float("nan")
    with pytest.raises(InputError, match="1 non-finite"):
        BACKEND.quantize_fp8(x, name="w", check_finite="sync")
    with pytest.raises(InputError, match="1 non-finite"):
        BACKEND.quantize_nvfp4(x, name="w")


@cuda
def test_pipelined_cuda_convert_writes_the_serial_cpu_bytes(tmp_path):
    from harness.fixtures.synth import make_model, make_sharded
    from quant.convert import convert
    src = make_model("wan22-ti2v-5b-thin", tmp_path / "src.safetensors", dtype=torch.float32)
    shards = make_sharded("wan22-ti2v-5b-thin", tmp_path / "shards", dtype=torch.float32)
    for fmt in ("fp8-legacy", "fp8", "nvfp4"):
        a = convert(src, tmp_path / f"cpu-{fmt}.safetensors", fmt, device="cpu", pipelined=False)
        b = convert(src, tmp_path / f"cuda-{fmt}.safetensors", fmt, device="cuda", pipelined=True)
        c = convert(shards, tmp_path / f"shards-{fmt}.safetensors", fmt, device="cuda", pipelined=True)
        h = {p: hashlib.sha256((tmp_path / f"{p}-{fmt}.safetensors").read_bytes()).hexdigest()
             for p in ("cpu", "cuda", "shards")}
        assert h["cpu"] == h["cuda"] == h["shards"], fmt
        assert a.layers == b.layers == c.layers


@cuda
def test_pipelined_cuda_convert_refuses_non_finite(tmp_path):
    from quant.convert import convert
    from quant.safetensors_io import save_file
    w = torch.randn(256, 256)
    w[10, 10] = float("inf")
    src = tmp_path / "bad.safetensors"
    save_file({"blocks.0.ffn.0.weight": torch.randn(256, 256), "blocks.0.ffn.2.weight": w}, src)
    out = tmp_path / "o.safetensors"
    with pytest.raises(InputError, match="blocks.0.ffn.2.weight.*1 non-finite"):
        convert(src, out, "nvfp4", preset="smart", device="cuda", pipelined=True)
    assert not out.exists() and not list(tmp_path.glob(".o.safetensors*"))
