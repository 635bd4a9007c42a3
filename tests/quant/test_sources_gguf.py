"""GGUF as a source (city96 layout written by gguf-py): read, dequantized by gguf-py, converted."""
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFWriter, quants

from quant.convert import convert
from quant.sources import open_source


def _write_gguf(path, tensors):
    w = GGUFWriter(str(path), "wan")
    w.add_file_type(7)  # MOSTLY_Q8_0
    w.add_quantization_version(2)
    for name, t in tensors.items():
        a = t.float().numpy()
        if name.startswith("blocks.") and name.endswith(".weight") and a.ndim == 2:
            w.add_tensor(name, quants.quantize(a, Q.Q8_0), raw_dtype=Q.Q8_0)
        elif a.ndim == 1:
            w.add_tensor(name, a.astype(np.float32))
        else:
            w.add_tensor(name, a.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def gguf_model(tmp_path_factory):
    from harness.fixtures.synth import tensors
    t = dict(tensors("wan22-ti2v-5b-thin", seed=5, dtype=torch.float32))
    p = tmp_path_factory.mktemp("gguf") / "wan_thin-Q8_0.gguf"
    _write_gguf(p, t)
    return p, t


def test_gguf_source_names_shapes_and_values(gguf_model):
    p, ref = gguf_model
    with open_source(p) as src:
        assert set(src.keys()) == set(ref)
        assert src.metadata["general.architecture"] == "wan"
        for name in ("patch_embedding.weight", "head.modulation", "blocks.1.ffn.0.weight", "blocks.0.norm3.bias"):
            assert src.info(name).shape == tuple(ref[name].shape)
        assert src.info("blocks.1.ffn.0.weight").stored == "Q8_0" and src.info("blocks.1.ffn.0.weight").dtype == "F32"
        w = src.get("blocks.1.ffn.0.weight")
        r = ref["blocks.1.ffn.0.weight"]
        assert w.shape == r.shape and float((w - r).norm() / r.norm()) < 0.02
        want = quants.dequantize(quants.quantize(r.numpy(), Q.Q8_0), Q.Q8_0)
        assert torch.equal(w, torch.from_numpy(want))


def test_convert_from_gguf(gguf_model, tmp_path):
    p, ref = gguf_model
    out = tmp_path / "from_gguf.safetensors"
    s = convert(p, out, "fp8", "wan22-ti2v-5b")
    assert s.layers == {"fp8": 20, "keep": 49}
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        w = f.get_tensor("blocks.0.cross_attn.k.weight").float() * f.get_tensor("blocks.0.cross_attn.k.weight_scale")
    r = ref["blocks.0.cross_attn.k.weight"]
    assert float((w - r).norm() / r.norm()) < 0.05


def test_malformed_gguf_one_line_error(cli, tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    out = tmp_path / "o.safetensors"
    r = cli("convert", bad, "-o", out)
    assert r.returncode == 2 and "broken.gguf" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
