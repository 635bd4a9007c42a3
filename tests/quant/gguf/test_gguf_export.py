"""export-gguf (GGUF -> dequantized safetensors) and GGUF candidates in the render gate (rendered as their
dequantized twin on the embedded ComfyUI)."""
import json
import struct

import numpy as np
import pytest
import torch
from gguf import GGUFReader, quants

from harness.fixtures import gguf_synth
from quant.safetensors_io import SafetensorsFile

THIN = "wan22-ti2v-5b-thin"


@pytest.fixture(scope="module")
def q4(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    return gguf_synth.make_gguf(THIN, d / "wan_thin-Q4_0.gguf", "Q4_0", seed=6)


def _unknown_type(src, dst):
    """Copy ``src`` with the GGML type id of its first tensor set to 99 (no such type)."""
    raw = bytearray(src.read_bytes())
    r = GGUFReader(str(src))
    t = r.tensors[0]
    name = t.name.encode()
    i = raw.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", raw, i)[0]
    struct.pack_into("<I", raw, i + 4 + 8 * n_dims, 99)
    dst.write_bytes(bytes(raw))
    return dst


def test_export_values_shapes_and_provenance(q4, tmp_path, capsys):
    from harness.cli import main
    out = tmp_path / "q4.safetensors"
    assert main(["export-gguf", str(q4), "-o", str(out), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["tensors"] == 69 and s["types"] == {"F16": 48, "F32": 1, "Q4_0": 18, "Q4_1": 2}
    r = GGUFReader(str(q4))
    raw = {t.name: t for t in r.tensors}
    with SafetensorsFile(out) as f:
        meta = f.metadata
        assert meta["quantgate.export_of"] == q4.name and meta["general.architecture"] == "wan"
        assert json.loads(meta["quantgate.gguf_types"])["Q4_1"] == 2
        pe = f.get("patch_embedding.weight")
        assert tuple(pe.shape) == (256, 48, 1, 2, 2) and pe.dtype == torch.float32
        w = f.get("blocks.1.ffn.0.weight")
        assert w.dtype == torch.float32 and tuple(w.shape) == (512, 256)
        want = quants.dequantize(raw["blocks.1.ffn.0.weight"].data, raw["blocks.1.ffn.0.weight"].tensor_type)
        assert np.array_equal(w.numpy(), want)
        h = f.get("head.head.weight")
        assert h.dtype == torch.float16 and np.array_equal(h.numpy(), np.asarray(raw["head.head.weight"].data))
    out16 = tmp_path / "q4_bf16.safetensors"
    assert main(["export-gguf", str(q4), "-o", str(out16), "--dtype", "bf16"]) == 0
    with SafetensorsFile(out16) as f:
        assert {f.info(n).dtype for n in f.keys()} == {"BF16"}


def test_export_bad_input_one_line_nothing_written(q4, tmp_path, capsys, cli):
    from harness.cli import main
    g = tmp_path / "in.gguf"
    g.write_bytes(q4.read_bytes())
    before = g.read_bytes()
    out = tmp_path / "o.safetensors"
    exists = tmp_path / "exists.safetensors"
    exists.write_bytes(b"keep me")
    (tmp_path / "badmagic.gguf").write_bytes(b"GGUX" + before[4:])
    (tmp_path / "trunc.gguf").write_bytes(before[: len(before) - 4096])
    (tmp_path / "absurd.gguf").write_bytes(before[:8] + (2**62).to_bytes(8, "little") + before[16:])
    _unknown_type(g, tmp_path / "unknowntype.gguf")
    badstr = bytearray(before)
    struct.pack_into("<Q", badstr, 24, 2**60)          # length of the first KV key string
    (tmp_path / "absurdstring.gguf").write_bytes(bytes(badstr))
    cases = [(["export-gguf", str(g), "-o", str(g)], "in.gguf"),
             (["export-gguf", str(g), "-o", str(exists)], "--force"),
             (["export-gguf", str(g), "-o", str(tmp_path / "x.bin")], ".safetensors"),
             (["export-gguf", str(tmp_path / "nope.gguf"), "-o", str(out)], "nope.gguf")]
    cases += [(["export-gguf", str(tmp_path / n), "-o", str(out)], n)
              for n in ("badmagic.gguf", "trunc.gguf", "absurd.gguf", "unknowntype.gguf", "absurdstring.gguf")]
    for args, needle in cases:
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
    r = cli("export-gguf", tmp_path / "unknowntype.gguf", "-o", out)      # end to end: no traceback
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert g.read_bytes() == before and exists.read_bytes() == b"keep me"
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


@pytest.fixture(scope="module")
def gguf_cands(tmp_path_factory, thin_source):
    """GGUFs of the gate's own thin model (F32 source -> city96 F16/F32 base types), Q8_0 and Q4_0."""
    d = tmp_path_factory.mktemp("gguf_cands")
    with SafetensorsFile(thin_source) as f:
        t = {n: f.get(n) for n in f.keys()}
    from harness.render import models
    arch = models.reference_arch()                        # the layout of the gate's own source model
    return d, {ft: gguf_synth.make_gguf(arch, d / f"thin-{ft}.gguf", ft, src_dtype="F32",
                                        source_tensors=t) for ft in ("Q8_0", "Q4_0")}


def test_gguf_candidate_rendered_as_its_dequantized_twin(comfy_session, thin_source, gguf_cands):
    from harness.render import gate
    d, g = gguf_cands
    pol = gate.load_policy()
    pol["plan"] = dict(pol["plan"], seeds=[1], sizes=[[64, 64]])          # 5 renders: keep CI short
    rec = gate.run_gate(comfy_session, thin_source, [g["Q8_0"], g["Q4_0"]], policy=pol, work_dir=d)
    by = {c["label"]: c for c in rec["candidates"]}
    assert set(by) == {"gguf Q8_0", "gguf Q4_0"}
    for c in by.values():
        assert c["format"] == "gguf" and c["rendered_as"] == "dequantized twin (gguf-py)"
        assert c["twin_sha256"] and c["twin_sha256"] != c["sha256"] and c["verify"] is None
        assert c["load_warnings"] == [] and c["execution_error"] is None
    assert by["gguf Q8_0"]["min_ssim"] >= 0.97 and by["gguf Q8_0"]["verdict"] == "pass"
    assert by["gguf Q4_0"]["min_ssim"] < by["gguf Q8_0"]["min_ssim"]
    assert rec["control"]["pass"] and rec["repeat"]["pass"]
