"""GGUF as a model description: real GGUFs (gguf-py's writer, gguf.quants) built with city96's
per-tensor type rules, read back (types, reversed dims, 5-D patch_embedding, names), matched
against the safetensors source, and turned into presets (`preset from-gguf`, `convert
--preset-from-gguf`, `plan`).

K-quant tensors (Q5_K, Q6_K) in these files carry all-zero block bytes ("opaque"): gguf-py cannot
quantize K-quants and quantgate has no K-quant quantizer dependency, so they are used only where
the type id matters (presets, plans, counts). Q4_0/Q4_1/Q8_0/F16/F32 tensors hold real data.
"""
import json
import tomllib
from collections import Counter

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter, quants

from harness.fixtures import gguf_synth
from quant.gguf import model as G
from quant import presets
from quant.errors import InputError, UsageError
from quant.sources import open_source

THIN = "wan22-ti2v-5b-thin"


class _Res:
    def __init__(self, rc, out, err):
        self.returncode, self.stdout, self.stderr = rc, out, err


@pytest.fixture
def qg(capsys):
    """The CLI in-process (same main(), same error handling; no interpreter start per call)."""
    from harness.cli import main

    def run(*args):
        capsys.readouterr()
        rc = main([str(a) for a in args])
        o = capsys.readouterr()
        return _Res(rc, o.out, o.err)
    return run

# layouts.md §4.4: published byte sizes of QuantStack's Wan2.2-TI2V-5B-*.gguf (from an F16 source)
# and city96's qwen-image-*.gguf (from a BF16 source)
WAN_SIZES = {"Q8_0": 5400179040, "Q6_K": 4211683680, "Q5_1": 3866636640, "Q5_K_M": 3810603360,
             "Q5_0": 3642503520, "Q5_K_S": 3559928160, "Q4_K_M": 3433116000, "Q4_1": 3253219680,
             "Q4_K_S": 3116380512, "Q4_0": 3029086560, "Q3_K_M": 2547790176, "Q3_K_S": 2294755680,
             "Q2_K": 1853862240}
QWEN_SIZES = {"BF16": 40872114720, "Q8_0": 21761817120, "Q6_K": 16824990240, "Q5_1": 15391717920,
              "Q5_K_M": 14934899232, "Q5_0": 14400813600, "Q5_K_S": 14117698080, "Q4_K_M": 13065746976,
              "Q4_1": 12843678240, "Q4_K_S": 12140608032, "Q4_0": 11852773920, "Q3_K_M": 9679567392,
              "Q3_K_S": 8952609312, "Q2_K": 7062518304}


@pytest.mark.parametrize("ftype", sorted(WAN_SIZES))
def test_rules_reproduce_quantstack_wan22_5b_sizes(ftype):
    size, lay = gguf_synth.header_bytes("wan22-ti2v-5b", ftype, "F16")
    assert size == WAN_SIZES[ftype]
    c = Counter(t for _, _, t in lay)
    assert len(lay) == 825 and c["F32"] == 1 and c["F16"] == 524      # 5-D patch_embedding F32, rest F16
    assert sum(v for k, v in c.items() if k not in ("F16", "F32")) == 300   # 10 block linears x 30


def test_wan_per_type_counts_of_named_files():
    """The per-type table of layouts.md §4.4 for the files the users run."""
    want = {"Q4_0": {"Q4_0": 270, "Q4_1": 30}, "Q5_K_M": {"Q5_K": 210, "Q6_K": 90}, "Q8_0": {"Q8_0": 300},
            "Q4_K_S": {"Q4_K": 266, "Q5_K": 34}, "Q3_K_M": {"Q3_K": 210, "Q5_K": 2, "Q4_K": 88}}
    for ftype, counts in want.items():
        lay = gguf_synth.layout("wan22-ti2v-5b", ftype, "F16")
        got = Counter(t for _, _, t in lay if t not in ("F16", "F32"))
        assert dict(got) == counts, ftype
    lay = dict((n, t) for n, _, t in gguf_synth.layout("wan22-ti2v-5b", "Q5_K_M", "F16"))
    assert lay["blocks.7.self_attn.v.weight"] == "Q6_K" and lay["blocks.7.ffn.2.weight"] == "Q6_K"
    assert lay["blocks.7.ffn.0.weight"] == "Q5_K" and lay["head.head.weight"] == "F16"
    assert lay["patch_embedding.weight"] == "F32" and lay["blocks.3.modulation"] == "F16"


@pytest.mark.parametrize("ftype", sorted(QWEN_SIZES))
def test_rules_reproduce_city96_qwen_image_sizes(ftype):
    size, lay = gguf_synth.header_bytes("qwen-image", ftype, "BF16")
    assert size == QWEN_SIZES[ftype]
    types = dict((n, t) for n, _, t in lay)
    assert len(lay) == 1933 and types["img_in.weight"] == "BF16" and types["txt_norm.weight"] == "F32"
    if ftype == "Q5_K_M":   # first/last block override (hard-coded block 59)
        assert {types[f"transformer_blocks.{b}.{x}.weight"] for b in (0, 59)
                for x in ("attn.to_q", "img_mlp.net.0.proj", "txt_mod.1")} == {"Q6_K"}
        assert types["transformer_blocks.5.attn.to_q.weight"] == "Q5_K"


# --- real thin files ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def thin(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguf_presets")
    src_t = dict(__import__("harness.fixtures.synth", fromlist=["tensors"]).tensors(THIN, seed=2, dtype=torch.float16))
    from quant.safetensors_io import save_file
    src = d / "wan_thin_fp16.safetensors"
    save_file(src_t, src)
    files = {f: gguf_synth.make_gguf(THIN, d / f"wan_thin-{f}.gguf", f, source_tensors=src_t)
             for f in ("Q4_0", "Q5_K_M", "Q8_0")}
    return d, src, src_t, files


def test_read_types_shapes_and_real_data(thin):
    d, src, ref, files = thin
    m = G.read(files["Q4_0"])
    assert m.arch == "wan" and m.file_type == "MOSTLY_Q4_0"
    assert m.counts() == {"F16": 48, "Q4_0": 18, "Q4_1": 2, "F32": 1}
    t = m.tensors["text_embedding.0.weight"]
    assert t.shape == (256, 4096) and t.ggml_type == "F16"
    ffn = m.tensors["blocks.1.ffn.0.weight"]
    assert ffn.shape == (512, 256) and ffn.ggml_type == "Q4_0" and ffn.bits == 4
    assert m.tensors["blocks.1.ffn.2.weight"].ggml_type == "Q4_1"          # FFN-down override
    pe = m.tensors["patch_embedding.weight"]
    assert pe.shape == (256, 48, 1, 2, 2) and pe.ggml_type == "F32"
    # GGUF stores the dims reversed (ne[0] = the input dim)
    r = GGUFReader(str(files["Q4_0"]))
    raw = {t.name: tuple(int(x) for x in t.shape) for t in r.tensors}
    assert raw["blocks.1.ffn.0.weight"] == (256, 512) and raw["patch_embedding.weight"] == (2, 2, 1, 48, 256)
    # the data is gguf-py's real quantization of the source
    with open_source(files["Q4_0"]) as s:
        w = s.get("blocks.1.ffn.2.weight")
        assert s.info("blocks.1.ffn.2.weight").stored == "Q4_1"
    x = ref["blocks.1.ffn.2.weight"].float().numpy()
    assert np.array_equal(w.numpy(), quants.dequantize(quants.quantize(x, Q.Q4_1), Q.Q4_1))


def _write_plain(path, items, arch="wan"):
    w = GGUFWriter(str(path), arch)
    w.add_file_type(1)
    for n, a in items:
        w.add_tensor(n, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_names_normalised_and_one_sided_report(thin, tmp_path):
    d, src, ref, files = thin
    keep = [n for n in ref if n not in ("patch_embedding.weight", "head.head.bias")]
    items = [("model.diffusion_model." + n, ref[n].numpy()) for n in keep]
    items.append(("model.diffusion_model.extra.weight", np.zeros((4, 4), np.float16)))
    g = _write_plain(tmp_path / "prefixed.gguf", items)
    m = G.read(g)
    assert "blocks.0.ffn.0.weight" in m.tensors and m.tensors["blocks.0.ffn.0.weight"].name.startswith("model.")
    rep = G.match(m, {n: tuple(t.shape) for n, t in ref.items()})
    assert rep.aside == ["patch_embedding.weight"]
    assert rep.only_source == ["patch_embedding.weight", "head.head.bias"]
    assert rep.only_gguf == ["model.diffusion_model.extra.weight"] and not rep.clean
    lines = "\n".join(rep.lines())
    assert "keep them aside" in lines and "head.head.bias" in lines and "extra.weight" in lines
    with pytest.raises(InputError, match="does not describe this source"):
        G.derive_preset(m, source_shapes={n: tuple(t.shape) for n, t in ref.items()}, sha256="0" * 64)
    # a prefixed source (ComfyUI-saved checkpoint) against the unprefixed GGUF: rules use the source's names
    pre = {"model.diffusion_model." + n: tuple(t.shape) for n, t in ref.items()}
    pr = G.derive_preset(G.read(files["Q4_0"]), source_shapes=pre, sha256="0" * 64)
    plan = presets.plan(pr, "nvfp4", [(n, "F16", s) for n, s in pre.items()])
    assert plan.by_action() == {"keep": 49, "nvfp4": 20}
    # the 5-D tensor alone missing (city96 before fix_5d_tensors.py) is fine: kept by an 'aside' rule
    g2 = _write_plain(tmp_path / "no5d.gguf", [(n, ref[n].numpy()) for n in ref if n != "patch_embedding.weight"])
    pr = G.derive_preset(G.read(g2), source_shapes={n: tuple(t.shape) for n, t in ref.items()})
    plan = presets.plan(pr, "nvfp4", [(n, "F16", tuple(t.shape)) for n, t in ref.items()])
    pe = next(x for x in plan.decisions if x.name == "patch_embedding.weight")
    assert pe.action == "keep" and pe.gguf == "aside"


def test_derived_preset_mapping_options(thin):
    d, src, ref, files = thin
    m = G.read(files["Q5_K_M"])
    rows = [(n, "F16", tuple(t.shape)) for n, t in ref.items()]

    def actions(mapping, target="nvfp4"):
        pl = presets.plan(G.derive_preset(m, mapping, sha256="x"), target, rows)
        return {x.name: x.action for x in pl.decisions}, pl

    a, pl = actions(G.Mapping())                       # Q5_K (5 bits) > 4 -> fp8; Q6_K -> fp8
    assert a["blocks.0.self_attn.q.weight"] == "fp8" and a["blocks.0.ffn.2.weight"] == "fp8"
    assert pl.by_action() == {"keep": 49, "fp8": 20}
    a, pl = actions(G.Mapping(nvfp4_max_bits=5))       # the jorismak recipe on Q5_K_M
    assert a["blocks.0.self_attn.q.weight"] == "nvfp4" and a["blocks.1.cross_attn.v.weight"] == "fp8"
    assert pl.by_action() == {"keep": 49, "nvfp4": 14, "fp8": 6}
    assert {x.gguf for x in pl.decisions if x.action == "nvfp4"} == {"Q5_K"}
    a, pl = actions(G.Mapping(nvfp4_max_bits=5, fp8_max_bits=5))    # Q6_K wider than 5 -> kept
    assert a["blocks.0.ffn.2.weight"] == "keep" and pl.by_action() == {"keep": 55, "nvfp4": 14}
    a, pl = actions(G.Mapping(nvfp4_max_bits=5, keep_edge_blocks=1))  # 2 blocks: both are edges
    assert pl.by_action() == {"keep": 69}
    a, pl = actions(G.Mapping(nvfp4_max_bits=5), target="fp8")
    assert pl.by_action() == {"keep": 49, "fp8": 20}
    with pytest.raises(UsageError):
        G.Mapping(nvfp4_max_bits=6, fp8_max_bits=5).check()


def test_preset_from_gguf_cli_writes_provenance_and_convert_uses_it(thin, tmp_path, qg):
    d, src, ref, files = thin
    out = tmp_path / "q5km.toml"
    r = qg("preset", "from-gguf", files["Q5_K_M"], "-o", out, "--nvfp4-max-bits", "5", "--source", src, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    data = tomllib.loads(out.read_text())
    prov = data["provenance"]
    assert prov["gguf_file"] == files["Q5_K_M"].name and prov["sha256"] == G.sha256_file(files["Q5_K_M"])
    assert prov["counts"] == {"F16": 48, "Q5_K": 14, "Q6_K": 6, "F32": 1} and prov["nvfp4_max_bits"] == 5
    assert summary["match"]["matched"] == 69 and summary["nvfp4_tensors_under_nvfp4"] == 14
    # plan shows each decision beside the GGUF type it came from
    r = qg("plan", src, "--preset", out, "--format", "nvfp4", "--json")
    plan = json.loads(r.stdout)
    by = {t["name"]: t for t in plan["tensors"]}
    assert by["blocks.0.cross_attn.v.weight"]["gguf"] == "Q6_K" and by["blocks.0.cross_attn.v.weight"]["action"] == "fp8"
    assert by["blocks.1.ffn.0.weight"]["gguf"] == "Q5_K" and by["blocks.1.ffn.0.weight"]["action"] == "nvfp4"
    assert plan["provenance"]["sha256"] == prov["sha256"]
    r = qg("plan", src, "--preset", out, "--format", "nvfp4")
    assert "gguf" in r.stdout.splitlines()[2] and "Q6_K   fp8" in r.stdout
    # convert --preset FILE and --preset-from-gguf (one step) write the same file
    o1, o2 = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert qg("convert", src, "-f", "nvfp4", "--preset", out, "-o", o1, "-q").returncode == 0
    r = qg("convert", src, "-f", "nvfp4", "--preset-from-gguf", files["Q5_K_M"], "--nvfp4-max-bits", "5",
            "-o", o2, "-q", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["layers"] == {"keep": 49, "nvfp4": 14, "fp8": 6}
    from quant.safetensors_io import read_header
    h1, h2 = read_header(o1), read_header(o2)
    assert h1.metadata["quantgate.preset_gguf_sha256"] == prov["sha256"]
    assert h1.tensors.keys() == h2.tensors.keys()
    assert h2.tensors["blocks.0.ffn.2.weight"].dtype == "F8_E4M3" and h2.tensors["blocks.0.ffn.0.weight"].dtype == "U8"


def test_gguf_source_type_reaches_the_plan(thin, qg):
    d, src, ref, files = thin
    r = qg("plan", files["Q4_0"], "--preset", "wan22-ti2v-5b", "--json")
    by = {t["name"]: t for t in json.loads(r.stdout)["tensors"]}
    assert by["blocks.0.ffn.2.weight"]["gguf"] == "Q4_1" and by["blocks.0.ffn.0.weight"]["gguf"] == "Q4_0"
    assert by["head.head.weight"]["gguf"] == "F16"


def test_preset_bad_input_nothing_written(thin, tmp_path, qg, cli):
    d, src, ref, files = thin
    g = tmp_path / "copy.gguf"
    g.write_bytes(files["Q4_0"].read_bytes())
    before = g.read_bytes()
    cases = []
    # output over the input / not a .toml / existing without --force / bad mapping
    cases.append((["preset", "from-gguf", g, "-o", g], g.name))
    t = tmp_path / "exists.toml"
    t.write_text("x = 1\n")
    cases.append((["preset", "from-gguf", g, "-o", t], "exists.toml"))
    cases.append((["preset", "from-gguf", g, "-o", tmp_path / "m.toml", "--nvfp4-max-bits", "8",
                   "--fp8-max-bits", "6"], "fp8-max-bits"))
    # malformed GGUFs: bad magic, truncated tensor data, absurd tensor count
    bad_magic = tmp_path / "badmagic.gguf"
    bad_magic.write_bytes(b"GGUX" + before[4:])
    cases.append((["preset", "from-gguf", bad_magic, "-o", tmp_path / "m.toml"], "badmagic.gguf"))
    trunc = tmp_path / "trunc.gguf"
    trunc.write_bytes(before[: len(before) // 2])
    cases.append((["preset", "from-gguf", trunc, "-o", tmp_path / "m.toml"], "trunc.gguf"))
    absurd = tmp_path / "absurd.gguf"
    absurd.write_bytes(before[:8] + (2**62).to_bytes(8, "little") + before[16:])
    cases.append((["preset", "from-gguf", absurd, "-o", tmp_path / "m.toml"], "absurd.gguf"))
    cases.append((["convert", src, "--preset-from-gguf", trunc, "-o", tmp_path / "m.safetensors"], "trunc.gguf"))
    cases.append((["convert", src, "--preset-from-gguf", g, "--preset", "smart", "-o", tmp_path / "m.safetensors"],
                  "exclude"))
    r = cli(*cases[4][0])         # one end-to-end subprocess: no traceback leaks past main()
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    for args, needle in cases:
        r = qg(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert g.read_bytes() == before and t.read_text() == "x = 1\n"
    assert not (tmp_path / "m.toml").exists() and not (tmp_path / "m.safetensors").exists()
    assert not list(tmp_path.glob(".*partial"))


@pytest.mark.parametrize("arch,ftype,src_dtype,name,want", [
    (THIN, "Q5_0", "F16", "blocks.0.ffn.2.weight", "Q5_1"),               # FFN-down override
    (THIN, "Q5_1", "F16", "blocks.1.self_attn.q.weight", "Q5_1"),
    ("qwen-image-thin", "BF16", "BF16", "transformer_blocks.1.attn.to_q.weight", "BF16"),
    ("qwen-image-thin", "Q4_1", "BF16", "transformer_blocks.1.img_mlp.net.2.weight", "Q4_1"),
])
def test_every_gguf_py_quantizer_writes_real_data(tmp_path, arch, ftype, src_dtype, name, want):
    """Q5_0, Q5_1, BF16 (and Q4_1 on Qwen) tensors hold gguf.quants' real encoding of the source."""
    from harness.fixtures.synth import tensors
    dt = {"F16": torch.float16, "BF16": torch.bfloat16}[src_dtype]
    src_t = dict(tensors(arch, seed=7, dtype=dt))
    p = gguf_synth.make_gguf(arch, tmp_path / f"{ftype}.gguf", ftype, src_dtype=src_dtype, source_tensors=src_t)
    m = G.read(p)
    assert m.tensors[name].ggml_type == want
    if arch.startswith("qwen"):
        assert m.arch == "qwen_image" and m.tensors["img_in.weight"].ggml_type == "BF16"
        assert m.tensors["txt_norm.weight"].ggml_type == "F32"           # 1-D from a BF16 source
    x = src_t[name].float().numpy()
    with open_source(p) as s:
        got = s.get(name).float().numpy()
    assert np.array_equal(got, quants.dequantize(quants.quantize(x, Q[want]), Q[want]))
    err = np.linalg.norm(got - x) / np.linalg.norm(x)
    assert err == 0 if want == "BF16" else 0 < err < 0.2    # bf16 source -> BF16 is lossless; Qn: a code, not noise
