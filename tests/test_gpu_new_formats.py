"""CUDA paths of the formats ComfyUI 0.33 ships beside fp8/nvfp4 (GPU box: `python -m pytest -m gpu
tests/test_gpu_new_formats.py`). Not run in CI (no GPU there)."""
from __future__ import annotations

import pytest
import torch

from quant import formats

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
NEW = ("int8", "int8-convrot", "mxfp8", "w4a4-convrot", "w4a8-int8")


def _kitchen_eager(fmt, x, conf):
    from tests.quant.formats.test_new_format_bytes import _kitchen
    return _kitchen(fmt, x, conf)


@pytest.mark.parametrize("fmt", NEW)
@pytest.mark.parametrize("shape", [(33, 64), (512, 1024), (3072, 5120)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_bytes_are_kitchens_eager_bytes_on_the_device(fmt, shape, dtype):
    f = formats.get(fmt)
    if f.refuses(*shape):
        pytest.skip("shape not held by the format")
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.05).to(dtype).cuda()
    ours = f.quantize(x)
    theirs = _kitchen_eager(fmt, x, f.layer_config(False, None, shape))
    for k in ours:
        assert ours[k].device.type == "cuda"
        assert torch.equal(ours[k].contiguous().view(torch.uint8), theirs[k].contiguous().view(torch.uint8)), k


@pytest.mark.parametrize("fmt", NEW)
def test_convert_device_cuda_pipelined_passes_verify(fmt, tmp_path):
    from harness.verify import verify
    from quant.convert import convert
    src = __import__("pathlib").Path(__file__).resolve().parents[1] / "harness" / "train" / "wan21-t2v-tiny.safetensors"
    out = tmp_path / f"{fmt}.safetensors"
    convert(src, out, fmt, device="cuda")
    rep = verify(out, src, device="cuda")
    assert rep.passed and rep.coverage["unchecked"] == [], [x.line() for x in rep.findings.all()]


def test_deferred_finiteness_check_raises_at_flush():
    from quant.errors import InputError
    from quant.kernels import get_backend
    be = get_backend("cuda")
    x = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    x[3, 3] = float("nan")
    be.quantize_fp8(x, name="bad", check_finite="deferred")        # no sync, no raise here
    with pytest.raises(InputError, match="non-finite"):
        be.flush()
    with pytest.raises(InputError):
        be.quantize_fp8(x, name="bad", check_finite="sync")


def test_the_default_op_defers_the_check_and_a_sync_call_raises_the_earlier_error_first():
    """The backend op's default is the deferred check (no host sync per call: the raw kernel's speed); the error
    still comes, naming the tensor: at flush(), at the next synchronous call (before that call's own check),
    and at the 64th deferred call. The format's quantize() checks at the call."""
    from quant import formats
    from quant.errors import InputError
    from quant.kernels import get_backend
    be = get_backend("cuda")
    be.flush()
    good = torch.randn(128, 128, device="cuda", dtype=torch.bfloat16)
    bad = good.clone()
    bad[5, 7] = float("inf")
    q, s = be.quantize_fp8(bad, name="first")                      # default: deferred, returns at once
    assert q.shape == bad.shape
    with pytest.raises(InputError) as e:
        be.quantize_fp8(good, name="second", check_finite="sync")
    assert "first" in str(e.value)
    be.flush()                                                      # the pending list was consumed by that raise
    for i in range(63):
        be.quantize_fp8(good, name=f"g{i}")
    be.quantize_fp8(bad, name="late")                               # no raise before the 64th deferred call ...
    with pytest.raises(InputError):
        be.quantize_fp8(good, name="g64")                           # ... which flushes
    be.flush()
    with pytest.raises(InputError, match="non-finite"):
        formats.get("fp8").quantize(bad, name="w")                  # the format checks at the call


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mxfp8_triton_exponent_edges_are_kitchens_eager_bytes_on_the_device(dtype):
    """Block amax / 448 on, just above and just below powers of two: the E8M0 exponent is ceil(log2(.)), so
    log2's last bit decides; the kernel must use the device's log2 (libdevice) and torch's x * fp32(1/448)."""
    from tests.quant.kernels.edges import mxfp8_boundary_blocks as _boundary_blocks
    from quant.kernels import get_backend
    f = formats.get("mxfp8")
    x = _boundary_blocks(dtype).cuda()
    be = get_backend("cuda")
    assert be.find("quantize_mxfp8", x) is not None and be.name == "triton"
    ours = f.quantize(x, backend=be)
    theirs = _kitchen_eager("mxfp8", x, f.layer_config(False, None, tuple(x.shape)))
    for k in ours:
        assert torch.equal(ours[k].view(torch.uint8), theirs[k].view(torch.uint8)), k


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("shape,chunk_kb", [((3072, 5120), 2048), ((3001, 4352), 1024), ((4096, 1040), 512)])
@pytest.mark.parametrize("path", ["async", "sync-op"])
def test_int8_convrot_row_chunks_write_kitchens_eager_bytes_on_the_device(monkeypatch, shape, chunk_kb, dtype, path):
    """The row-chunked ConvRot rotation (CFG rot_chunk_kb: one cuBLAS call per chunk of rows into a scratch, the
    per-row kernel on it) against kitchen's eager quantize_int8_convrot_weight (ONE matmul over the whole weight):
    equal bytes means cuBLAS summed every chunk's rows as it sums the whole weight's. Magnitudes spread over ~2^-20..
    2^6 inside each group, so a different summation order shows."""
    from comfy_kitchen.backends.eager.quantization import quantize_int8_convrot_weight
    from quant.formats import convrot
    from quant.kernels import get_backend
    from quant.kernels import triton_quant as tq
    g = torch.Generator(device="cuda").manual_seed(7)
    x = torch.randn(shape, device="cuda", generator=g)
    x = (x * torch.exp2(torch.randn(shape, device="cuda", generator=g) * 4).clamp(max=64.0)).to(dtype)
    group = convrot.group_for(shape[1])
    monkeypatch.setitem(tq.CFG, "rot_chunk_kb", chunk_kb)
    assert len(tq._rotation_chunks(*shape, x.element_size())) > 1
    if path == "async":
        q, s, amax = tq.quantize_int8_convrot_async(x, group)
        assert torch.isfinite(amax)
    else:
        q, s = get_backend("cuda").quantize_int8_convrot(x, group, check_finite="sync")
    q2, s2 = quantize_int8_convrot_weight(x, group)
    assert torch.equal(q, q2) and torch.equal(s, s2)


def test_w4a8_triton_kernel_serves_cuda_and_knows_torchs_sum_order_there():
    """The W4A8 kernel is bit-exact only in torch's own order of the ALS sums and with torch's e4m3 overflow byte on
    the device; both are probed there. None would silently put w4a8 back on the torch ops: fail instead."""
    from quant.kernels import get_backend, triton_w4a8
    assert triton_w4a8.sum_order("cuda") in triton_w4a8.ORDERS
    assert triton_w4a8.e4m3_overflow("cuda") in (0x7E, 0x7F)
    r = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    from quant.formats.w4a8_int8 import FIXED_CODEBOOK
    cb = torch.tensor(FIXED_CODEBOOK, device="cuda")
    assert get_backend("cuda").quantize_w4a8_rotated(r, cb) is not None


W4A8_EDGE_CASES = [(dt, cbk, 0) for dt in (torch.float32, torch.bfloat16, torch.float16)
                   for cbk in ("fixed", "random", "duplicates", "unsorted", "narrow")] + \
                  [(torch.bfloat16, cbk, 1) for cbk in ("fixed", "duplicates", "narrow")]


@pytest.mark.parametrize("dtype,cbk,fastdiv", W4A8_EDGE_CASES)
def test_w4a8_triton_rotated_part_edges_are_kitchens_eager_bytes_on_the_device(dtype, cbk, fastdiv, monkeypatch):
    """Group edges (zeros, all-equal, one spike, +-large, subnormal, tiny, ties on the int8 grid) with every codebook
    shape, kernel vs kitchen's eager _quantize_rotated_w4a8_int8_weight on the same CUDA tensors; fastdiv 1: the
    opt-in reciprocal + FMA division (its range guard sends the edge tiles to the IEEE division)."""
    ek = pytest.importorskip("comfy_kitchen.backends.eager.w4a8_int8")
    from quant.kernels import triton_w4a8
    monkeypatch.setitem(triton_w4a8.CFG, "fastdiv", fastdiv)
    from tests.quant.kernels.edges import W4A8_GROUP_KINDS, w4a8_codebook, w4a8_rotated
    g = torch.Generator().manual_seed(17)
    for n, k, mag in ((1, 16, 1.0), (7, 80, 1e-6), (33, 272, 100.0), (300, 4096, 0.02)):
        r = w4a8_rotated(n, k, W4A8_GROUP_KINDS, mag, dtype, g).cuda()
        cb = w4a8_codebook(cbk, g).cuda()
        theirs = ek._quantize_rotated_w4a8_int8_weight(r, 16, codebook_override=cb)
        got = triton_w4a8.quantize_w4a8_rotated(r, cb)
        assert got is not None
        for a, b, what in zip(got[:3], theirs[:3], ("packed", "s_rel", "s_channel")):
            ne = int((a.contiguous().view(torch.uint8) != b.contiguous().view(torch.uint8)).sum()) \
                if a.element_size() == 1 else int((a != b).sum())
            assert ne == 0, f"{what} {n}x{k} {dtype} {cbk} fastdiv={fastdiv}: {ne} of {a.numel()} differ"


@pytest.mark.parametrize("kind,fastdiv", [("heavy", 0), ("outliers", 0), ("zero_rows", 0), ("normal", 1), ("heavy", 1)])
def test_w4a8_whole_quantize_fitted_codebooks_are_kitchens_eager_bytes_on_the_device(kind, fastdiv, monkeypatch):
    """Heavy-tailed weights (the kurtosis gate fits a codebook on the device), outliers, zero rows; more rows than
    kitchen's 2**22-element chunk."""
    from quant.formats import w4a8_int8
    monkeypatch.setattr(w4a8_int8, "TRITON", True)          # the opt-in Triton path
    from quant.kernels import triton_w4a8
    from tests.quant.formats.test_new_format_bytes import _kitchen
    monkeypatch.setitem(triton_w4a8.CFG, "fastdiv", fastdiv)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1100, 4096, generator=g) * 0.02
    if kind == "heavy":
        x = x * torch.exp(2 * torch.randn(1100, 4096, generator=g))
    elif kind == "outliers":
        x[torch.rand(1100, 4096, generator=g) < 0.001] *= 300
    elif kind == "zero_rows":
        x[::3] = 0
    x = x.to(torch.bfloat16).cuda()
    f = formats.get("w4a8-int8")
    ours = f.quantize(x)
    theirs = _kitchen("w4a8-int8", x, f.layer_config(False, None, tuple(x.shape)))
    for k in ours:
        assert torch.equal(ours[k].contiguous().view(torch.uint8), theirs[k].contiguous().view(torch.uint8)), k


@pytest.mark.parametrize("triton_path", [False, True])
def test_w4a8_non_finite_weight_is_refused_and_an_overflowing_rotation_is_kitchens_bytes(triton_path, monkeypatch):
    """The CUDA path has no finiteness pass of its own (the kernel's amax finds inf/NaN): a NaN/inf weight raises
    InputError; a finite weight whose rotation overflows bf16 takes the torch ops and writes kitchen's bytes."""
    from quant.errors import InputError
    from quant.formats import w4a8_int8
    from tests.quant.formats.test_new_format_bytes import _kitchen
    monkeypatch.setattr(w4a8_int8, "TRITON", triton_path)
    f = formats.get("w4a8-int8")
    x = (torch.randn(64, 512, generator=torch.Generator().manual_seed(2)) * 0.02).to(torch.bfloat16).cuda()
    for bad in (float("nan"), float("inf")):
        y = x.clone()
        y[7, 100] = bad
        with pytest.raises(InputError, match="non-finite"):
            f.quantize(y, name="bad")
    y = x.clone()
    y[5, :256] = 3e38
    ours = f.quantize(y)
    theirs = _kitchen("w4a8-int8", y, f.layer_config(False, None, tuple(y.shape)))
    for k in ours:
        assert torch.equal(ours[k].contiguous().view(torch.uint8), theirs[k].contiguous().view(torch.uint8)), k
