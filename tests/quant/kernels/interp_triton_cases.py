"""Cases for tests/test_triton_kernels.py, which runs this file in a fresh interpreter with
TRITON_INTERPRET=1 (Triton reads it when it is first imported). Not collected on its own."""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quant.kernels import fp8, nvfp4
from tests.quant.kernels.edges import mxfp8_boundary_blocks as _boundary_blocks

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by tests/test_triton_kernels.py under TRITON_INTERPRET=1", allow_module_level=True)


@pytest.fixture(scope="module")
def tq():
    from quant.kernels import triton_quant as mod
    assert mod.available("cpu") and mod.interpreted()
    q, s, a = mod.quantize_fp8_async(torch.ones(4, 4), hw=False)      # interpreted: runs on CPU tensors
    assert q.device.type == "cpu" and torch.equal(s, torch.tensor(1.0) / torch.tensor(448.0))
    return mod


@st.composite
def weights(draw):
    n, k = draw(st.integers(1, 70)), draw(st.integers(1, 90))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    mag = draw(st.sampled_from([1e-5, 1e-2, 1.0, 300.0]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(n, k, generator=g) * mag
    kind = draw(st.sampled_from(["normal", "zeros", "negzero", "ties"]))
    if kind == "zeros":
        x[: n // 2] = 0
    elif kind == "negzero":
        x[x.abs() < mag] = -0.0
    elif kind == "ties":          # values on E2M1 decision boundaries once scaled
        x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0])[torch.randint(0, 8, (n, k), generator=g)]
        x = x * torch.sign(torch.randn(n, k, generator=g)) * mag
    return x.clamp(-6e4, 6e4).to(dtype)


def _eq(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8) if a.element_size() == 1
                                                                       else a, b.view(torch.uint8)
                                                                       if b.element_size() == 1 else b)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(x=weights(), enc=st.sampled_from([0, 1]))
def test_interpreted_kernels_bit_exact_with_eager(tq, x, enc):
    tq.CFG["nv_enc"] = enc            # both E2M1 encoders of the nvfp4 kernel
    q, s = fp8.quantize(x)
    q2, s2_, amax = tq.quantize_fp8_async(x, hw=False)
    assert _eq(q, q2) and torch.equal(s, s2_)
    assert float(amax) == float(x.abs().max())
    p, bs, s2 = nvfp4.quantize(x)
    p2, bs2, s22, _ = tq.quantize_nvfp4_async(x, hw=False)
    assert _eq(p, p2) and _eq(bs, bs2) and torch.equal(s2, s22)
    n, k = x.shape
    assert torch.equal(tq.dequantize_fp8(q, s, x.dtype, hw=False), fp8.dequantize(q, s, x.dtype))
    assert torch.equal(tq.dequantize_nvfp4(p, bs, s2, n, k, x.dtype, hw=False),
                       nvfp4.dequantize(p, bs, s2, (n, k), x.dtype))


def test_interpreted_amax_propagates_non_finite(tq):
    x = torch.randn(40, 40)
    x[5, 5] = float("inf")
    assert float(tq.quantize_fp8_async(x, hw=False)[2]) == float("inf")
    x[6, 6] = float("nan")
    assert torch.isnan(tq.quantize_nvfp4_async(x, hw=False)[3])


def test_given_global_scale_is_used(tq):
    x = torch.randn(33, 50)
    s2 = nvfp4.global_scale(x) * 2
    p, bs, _ = nvfp4.quantize(x, s2)
    p2, bs2, s22, _ = tq.quantize_nvfp4_async(x, s2, hw=False)
    assert torch.equal(p, p2) and _eq(bs, bs2) and torch.equal(s22, s2)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(x=weights())
def test_interpreted_int8_rows_bit_exact_with_the_format_math(tq, x):
    """The per-row int8 kernel (int8 and int8-convrot on CUDA) writes quant.formats.int8's bytes, which are
    comfy-kitchen's eager quantize_int8_rowwise's (tests/quant/formats/test_new_format_bytes.py)."""
    from quant.formats.int8 import quantize_rowwise
    x = x.clone()
    x[0] = 0                                                   # an all-zero row: the tiny-divisor branch
    q, s, amax = tq.quantize_int8_rows_async(x, hw=False)
    q2, s2 = quantize_rowwise(x)
    assert torch.equal(q, q2) and torch.equal(s, s2)
    assert float(amax) == float(x.abs().amax().float())


def test_interpreted_int8_rows_flag_non_finite(tq):
    x = torch.randn(4, 64)
    x[2, 3] = float("inf")
    assert not torch.isfinite(tq.quantize_int8_rows_async(x, hw=False)[2])


def test_every_formats_async_path_writes_its_planned_tensors(tq):
    """The pipelined CUDA stage writes what each format's quantize_async returns into the header planned from
    the format's entries: same keys, dtypes and shapes (a GPU run once found int8 layers given fp8 codes)."""
    from quant import formats
    from quant.safetensors_io import DTYPE_NAMES
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(3))
    asked = 0
    for f in formats.FORMATS.values():
        if not f.target:
            continue
        fast = f.quantize_async(tq, x)
        if fast is None:
            continue
        asked += 1
        raw, amax = fast
        planned = {key.split(".", 1)[1]: (dt, tuple(shape)) for key, dt, shape in f.entries("L", 64, 256)}
        got = {s: (DTYPE_NAMES[t.dtype], tuple(f.companion(s).fit(t).shape)) for s, t in raw.items()}
        assert got == {s: planned[s] for s in got} and set(got) >= {s for s in planned if s != f.input_scale_key}, f.name
        assert torch.isfinite(amax)
    assert asked >= 6


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(x=weights())
def test_interpreted_mxfp8_bit_exact_with_the_format_math(tq, x):
    """The MXFP8 kernel writes quant.formats.mxfp8's bytes (= comfy-kitchen's eager quantize_mxfp8's,
    tests/quant/formats/test_new_format_bytes.py): codes padded to 32, swizzled E8M0 exponents, zero blocks."""
    from quant.formats import mxfp8
    x = x.clone()
    x[0] = 0
    q, s, amax = tq.quantize_mxfp8_async(x, hw=False)
    q2, s2 = mxfp8.quantize(x)
    assert _eq(q, q2) and torch.equal(s, s2)
    assert float(amax) == float(x.abs().amax().float())


def test_interpreted_mxfp8_exponent_edges_and_non_finite(tq):
    from quant.formats import mxfp8
    x = _boundary_blocks()
    q, s, _ = tq.quantize_mxfp8_async(x, hw=False)
    q2, s2 = mxfp8.quantize(x)
    assert _eq(q, q2) and torch.equal(s, s2)
    x[3, 3] = float("nan")
    assert torch.isnan(tq.quantize_mxfp8_async(x, hw=False)[2])


@st.composite
def w4a4_weights(draw):
    x = draw(weights())
    k = 64 * draw(st.integers(1, 5))
    n = x.shape[0]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    y = torch.randn(n, k, generator=g) * float(x.float().abs().amax().clamp(min=1e-6))
    return y.to(x.dtype)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(x=w4a4_weights())
def test_interpreted_w4a4_rows_bit_exact_with_the_format_math(tq, x):
    """The W4A4 kernel on the torch-rotated weight (the default CUDA path) writes quant.formats.w4a4_convrot's
    bytes (= comfy-kitchen's eager quantize_convrot_w4a4_weight's): row scale in the weight's dtype, int4 codes,
    even column in the low nibble; an all-zero row takes the clamp(min=1e-10) branch."""
    from quant.formats import convrot, w4a4_convrot
    x = x.clone()
    x[0] = 0
    g = convrot.group_for(x.shape[1], w4a4_convrot.GROUPS)
    p, s, amax = tq.quantize_w4a4_convrot_async(x, g, hw=False)
    p2, s2 = w4a4_convrot.quantize_w4a4(x, g)
    assert torch.equal(p, p2) and torch.equal(s, s2)
    assert float(amax) == float(convrot.rotate(x, g).abs().amax().float())


def test_interpreted_fused_rotation_matches_the_torch_rotation_path(tq, monkeypatch):
    """rot_fused=1 (the rotation inside the kernel, tl.dot) against the default path: the interpreter's dot sums
    in another order than torch's matmul, so codes may differ by one step here; whether the card's MMA writes
    cuBLAS's bits is checked on the GPU (benchmarks/test_bench_new_formats_gpu.py)."""
    from quant.formats import convrot
    x = torch.randn(40, 512, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    ref_i8 = tq.quantize_int8_convrot_async(x, 256, hw=False)
    ref_w4 = tq.quantize_w4a4_convrot_async(x, 256, hw=False)
    monkeypatch.setitem(tq.CFG, "rot_fused", 1)
    i8 = tq.quantize_int8_convrot_async(x, 256, hw=False)
    w4 = tq.quantize_w4a4_convrot_async(x, 256, hw=False)
    assert (i8[0].int() - ref_i8[0].int()).abs().max() <= 1 and torch.allclose(i8[1], ref_i8[1], rtol=1e-2)
    d = convrot.unpack_int4(w4[0]).int() - convrot.unpack_int4(ref_w4[0]).int()
    assert d.abs().max() <= 1 and (d != 0).float().mean() < 0.01 and torch.allclose(w4[1], ref_w4[1], rtol=1e-2)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(n=st.integers(32, 150), groups=st.integers(1, 3), g=st.sampled_from([16, 64, 256]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]), chunk_kb=st.sampled_from([1, 4, 16]),
       seed=st.integers(0, 2**31 - 1))
def test_interpreted_int8_convrot_row_chunks_write_the_format_bytes(tq, monkeypatch, n, groups, g, dtype, chunk_kb,
                                                                    seed):
    """CFG rot_chunk_kb: the rotation in row chunks (torch.mm of each chunk into one scratch buffer, the per-row kernel
    on each) writes quant.formats.int8_convrot's bytes (= kitchen's eager quantize_int8_convrot_weight's), the same as
    the whole-weight path; the sync backend op (quantize_int8_convrot) takes the same route. A NaN still shows in
    the amax."""
    from quant.formats.int8_convrot import quantize_convrot
    gen = torch.Generator().manual_seed(seed)
    k = g * groups
    x = (torch.randn(n, k, generator=gen) * torch.exp(torch.randn(n, k, generator=gen) * 3)).clamp(-6e4, 6e4)
    x[1] = 0
    x = x.to(dtype)
    monkeypatch.setitem(tq.CFG, "rot_chunk_kb", chunk_kb)
    chunks = tq._rotation_chunks(n, k, x.element_size())
    q, s, amax = tq.quantize_int8_convrot_async(x, g, hw=False)
    q2, s2 = quantize_convrot(x, g)
    assert torch.equal(q, q2) and torch.equal(s, s2)
    assert float(amax) == float(tq.rotate_chunk(x, g).abs().amax().float())
    if len(chunks) > 1:
        x[n - 1, 0] = float("nan")
        assert torch.isnan(tq.quantize_int8_convrot_async(x, g, hw=False)[2])
