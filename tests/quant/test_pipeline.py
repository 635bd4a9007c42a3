"""The pipelined converter (quant.pipeline): byte-identical to the serial loop, bounded buffers,
batched small reads, clean failure on bad weights. CPU path here; the CUDA path in test_gpu_kernels."""
import hashlib
import threading

import pytest
import torch

from quant import pipeline
from quant.convert import convert
from quant.errors import InputError
from quant.safetensors_io import save_file


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("fmt", ["fp8-legacy", "fp8", "nvfp4"])
def test_pipelined_output_is_byte_identical_to_serial(thin_wan5b, tmp_path, fmt):
    a = convert(thin_wan5b, tmp_path / "serial.safetensors", fmt, pipelined=False)
    b = convert(thin_wan5b, tmp_path / "pipe.safetensors", fmt)
    assert _sha(tmp_path / "serial.safetensors") == _sha(tmp_path / "pipe.safetensors")
    assert a.layers == b.layers and a.tensors_out == b.tensors_out


def test_pipelined_mixed_dtypes_and_misaligned_tensors(tmp_path):
    """fp32/fp16 weights, a 3-byte tensor that leaves the next ones at odd file offsets, a 0-size one."""
    g = torch.Generator().manual_seed(3)
    t = {"a.odd": torch.arange(3, dtype=torch.uint8),
         "blocks.0.ffn.0.weight": torch.randn(96, 64, generator=g).to(torch.float16),
         "blocks.0.ffn.2.weight": torch.randn(64, 96, generator=g),
         "blocks.0.ffn.0.bias": torch.randn(96, generator=g),
         "z.empty": torch.empty(0, dtype=torch.float32)}
    src = tmp_path / "m.safetensors"
    save_file(t, src)
    for fmt in ("fp8", "nvfp4"):
        convert(src, tmp_path / f"s-{fmt}.safetensors", fmt, preset="smart", pipelined=False)
        s = convert(src, tmp_path / f"p-{fmt}.safetensors", fmt, preset="smart")
        assert s.layers == {"keep": 3, fmt: 2}, s.layers
        assert _sha(tmp_path / f"s-{fmt}.safetensors") == _sha(tmp_path / f"p-{fmt}.safetensors"), fmt


def test_non_finite_weight_fails_cleanly_in_the_pipeline(tmp_path):
    w = torch.randn(64, 64)
    w[3, 5] = float("nan")
    w[7, 1] = float("inf")
    src = tmp_path / "bad.safetensors"
    save_file({"blocks.0.ffn.0.weight": torch.randn(64, 64), "blocks.0.ffn.2.weight": w}, src)
    out = tmp_path / "o.safetensors"
    with pytest.raises(InputError) as e:
        convert(src, out, "nvfp4", preset="wan22-ti2v-5b")
    assert "blocks.0.ffn.2.weight" in str(e.value) and "2 non-finite" in str(e.value)
    assert "bad.safetensors" in str(e.value)
    assert not out.exists() and not list(tmp_path.glob(".o.safetensors*"))


def test_ring_allocates_fifo_wraps_and_waits():
    abort = threading.Event()
    r = pipeline.Ring(1024, False, abort)
    a = r.alloc(400)
    b = r.alloc(400)
    assert (a[0], b[0]) == (0, 448)
    got = []
    th = threading.Thread(target=lambda: got.append(r.alloc(300)))
    th.start()
    th.join(0.2)
    assert th.is_alive()                      # only 128 bytes free at the end, 0 at the start
    r.free(b)                                 # out of order: space returns only when a is freed too
    th.join(0.2)
    assert th.is_alive()
    r.free(a)
    th.join(2)
    assert got and got[0][0] in (0, 896) and not th.is_alive()
    c = got[0]
    d = r.alloc(500)                          # fits after c (wrapped) or at the start
    assert not (d[0] < c[1] and c[0] < d[1])  # no overlap
    with pytest.raises(ValueError):
        r.alloc(2048)
    abort.set()
    with pytest.raises(pipeline._Abort):
        r.alloc(1000)


def test_small_tensors_are_read_in_batches():
    It = pipeline._Item
    items = [It(None, "f", 0, 100, torch.uint8, (100,)), It(None, "f", 100, 50, torch.uint8, (50,)),
             It(None, "f", 150, 2 << 20, torch.uint8, (2 << 20,)), It(None, "f", (2 << 20) + 150, 10, torch.uint8, (10,)),
             It(None, "g", 0, 10, torch.uint8, (10,)), It(None, "g", 20, 10, torch.uint8, (10,))]
    groups = [[i.begin for i in g] for g in pipeline._groups(items)]
    assert groups == [[0, 100], [150], [(2 << 20) + 150], [0], [20]]
