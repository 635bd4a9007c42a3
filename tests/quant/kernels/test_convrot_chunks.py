"""The int8 ConvRot rotation of the Triton path (quant.kernels.triton_quant.rotate_chunk / _rotation_chunks), on the
CPU: the rotation is the very torch call of comfy-kitchen's eager reference, and the row chunks tile the weight."""
import pytest
import torch

tq = pytest.importorskip("quant.kernels.triton_quant")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,g", [((40, 512), 256), ((33, 1040), 16), ((7, 192), 64)])
def test_rotate_chunk_is_kitchens_eager_rotation(shape, g, dtype):
    """torch.mm of the [n * k / g, g] view with h.T (what torch.matmul of kitchen's 3-D view folds into), with and
    without a preallocated output, equals kitchen's _rotate_weight bit for bit."""
    from comfy_kitchen.tensor.int8_utils import _build_hadamard, _rotate_weight
    x = (torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 3).to(dtype)
    ref = _rotate_weight(x, _build_hadamard(g, dtype=dtype), g)
    assert torch.equal(tq.rotate_chunk(x, g), ref)
    buf = torch.empty(shape[0] * shape[1] // g, g, dtype=dtype)
    out = tq.rotate_chunk(x, g, buf)
    assert torch.equal(out, ref) and out.data_ptr() == buf.data_ptr()


@pytest.mark.parametrize("n,k,item,kb", [(14336, 5120, 2, 16 << 10), (5120, 5120, 2, 8 << 10), (3001, 4352, 2, 4 << 10),
                                         (3072, 12288, 4, 16 << 10), (40, 16, 2, 1), (31, 4096, 4, 1), (100, 256, 2, 0)])
def test_rotation_chunks_tile_the_rows_in_near_equal_aligned_parts(monkeypatch, n, k, item, kb):
    monkeypatch.setitem(tq.CFG, "rot_chunk_kb", kb)
    ch = tq._rotation_chunks(n, k, item)
    assert ch[0][0] == 0 and ch[-1][1] == n and all(a[1] == b[0] for a, b in zip(ch, ch[1:]))
    sizes = [b - a for a, b in ch]
    assert min(sizes) > 0 and max(sizes) - min(sizes) < 32 and all(a % 16 == 0 for a, _ in ch)
    if kb == 0 or n * k * item <= kb << 10 or n < 32:
        assert ch == [(0, n)]
    else:
        assert len(ch) == min(n // 16, -(-n * k * item // (kb << 10)))
        assert max(sizes) * k * item <= (kb << 10) + 16 * k * item
