"""The quality ladder on the thin WAN 2.2 5B: real GGUFs (gguf-py quantized Q4_0/Q4_1 and Q8_0) beside
FP8 and NVFP4-mixed (hand preset, GGUF-derived preset); errors cross-checked against independent
decoders (gguf-py's own round trip, comfy-kitchen's eager dequantizers)."""
import json
import math

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import quants

from harness.fixtures import gguf_synth
from harness.gguf import ladder
from quant.gguf import model as G

THIN = "wan22-ti2v-5b-thin"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from harness.fixtures.synth import tensors
    from quant.safetensors_io import save_file
    d = tmp_path_factory.mktemp("ladder")
    t = dict(tensors(THIN, seed=4, dtype=torch.float16))
    src = d / "wan_thin_fp16.safetensors"
    save_file(t, src)
    g = {f: gguf_synth.make_gguf(THIN, d / f"wan_thin-{f}.gguf", f, source_tensors=t) for f in ("Q4_0", "Q8_0")}
    return d, src, t, g


def _err2(a, b):
    return float((a.double() - b.double()).pow(2).sum())


@pytest.fixture(scope="module")
def lad(files):
    d, src, t, g = files
    return ladder.run(src, [g["Q4_0"], g["Q8_0"]], ("fp8", "nvfp4"), [None], [(g["Q4_0"], G.Mapping())])


def test_ladder_columns_and_independent_numbers(files, lad):
    import comfy_kitchen as ck
    from quant import formats as F
    d, src, t, g = files
    labels = [c.label for c in lad.columns]
    assert labels == ["gguf Q4_0", "gguf Q8_0", "fp8 wan22-ti2v-5b", "nvfp4 wan22-ti2v-5b", "nvfp4 via Q4_0"]
    assert len(lad.layers) == 20 and all(n.startswith("blocks.") for n in lad.layers)
    q4, q8, fp8, hand, derived = lad.columns
    n = "blocks.1.ffn.2.weight"
    w = t[n].float()
    # GGUF: gguf-py's own round trip of the source (Q4_0 file stores FFN-down as Q4_1)
    assert q4.what[n] == "Q4_1" and q8.what[n] == "Q8_0"
    rt = torch.from_numpy(quants.dequantize(quants.quantize(w.numpy(), Q.Q4_1), Q.Q4_1))
    assert q4.err2[n] == pytest.approx(_err2(w, rt), rel=1e-9)
    # FP8 / NVFP4: decoded by comfy-kitchen's eager reference, not by quantgate
    assert hand.what[n] == "fp8" and derived.what[n] == "nvfp4"        # Q4_1 is 4-bit -> nvfp4
    with ck.use_backend("eager"):
        tq = F.get("nvfp4").quantize(t[n])             # the source tensor as convert reads it (fp16)
        wn = ck.dequantize_nvfp4(tq["weight"], tq["weight_scale_2"], tq["weight_scale"], torch.float32)
        t8 = F.get("fp8").quantize(t[n])
        w8 = ck.dequantize_per_tensor_fp8(t8["weight"], t8["weight_scale"], torch.float32)
    assert derived.err2[n] == pytest.approx(_err2(w, wn), rel=1e-9)
    assert hand.err2[n] == pytest.approx(_err2(w, w8), rel=1e-9) and fp8.err2[n] == hand.err2[n]
    assert lad.rel(q8, n) == pytest.approx(math.sqrt(q8.err2[n] / float(w.double().pow(2).sum())))
    # the ladder's order on this model: Q8_0 > FP8 > NVFP4 (V/FFN-down in FP8) > NVFP4 everywhere > Q4_0
    s = [lad.sqnr(c) for c in (q8, fp8, hand, derived, q4)]
    assert s == sorted(s, reverse=True), s
    assert 35 < s[0] < 45 and 12 < s[-1] < 22


def test_ladder_cli_json_and_html(files, lad, tmp_path, capsys):
    from harness.cli import main
    d, src, t, g = files
    page = tmp_path / "rep" / "ladder.html"
    rc = main(["ladder", str(src), "--gguf", str(g["Q8_0"]), "--formats", "nvfp4", "--json", "--html", str(page)])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["label"] for c in out["columns"]] == ["gguf Q8_0", "nvfp4 wan22-ti2v-5b"]
    row = next(r for r in out["layers"] if r["name"] == "blocks.0.self_attn.v.weight")
    assert row["nvfp4 wan22-ti2v-5b"]["what"] == "fp8" and row["gguf Q8_0"]["what"] == "Q8_0"
    nv = out["columns"][1]
    assert nv["counts"] == {"fp8": 6, "nvfp4": 14}
    assert nv["whole_model"]["sqnr_db"] == pytest.approx(lad.sqnr(lad.columns[3]), abs=1e-5)
    png = page.parent / "ladder_sqnr.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    html = page.read_text()
    assert "ladder_sqnr.png" in html and "gguf Q8_0" in html and "blocks.1.ffn.2.weight" in html
    assert not list(page.parent.glob(".*partial*"))
    # the terminal table
    rc = main(["ladder", str(src), "--gguf", str(g["Q4_0"]), "--formats", ""])
    txt = capsys.readouterr().out
    assert rc == 0 and "whole model (SQNR dB)" in txt and "Q4_1" in txt


def test_ladder_bad_input(files, tmp_path, capsys):
    from harness.cli import main
    d, src, t, g = files
    other = gguf_synth.make_gguf("wan21-t2v-thin", tmp_path / "other.gguf", "Q8_0")
    cases = [(["ladder", str(g["Q8_0"])], "not a GGUF"),
             (["ladder", str(src), "--gguf", str(other)], "does not describe this source"),
             (["ladder", str(src), "--formats", "int3"], "int3"),
             (["ladder", str(src), "--gguf", str(tmp_path / "missing.gguf")], "missing.gguf")]
    for args, needle in cases:
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1, (args, err)
    assert not np.any([p.name.endswith(".png") for p in tmp_path.iterdir()])


def test_fp8_and_nvfp4_columns_score_exactly_what_convert_writes(files, lad, tmp_path):
    """Issue 21: the ladder's FP8 column divided in another precision than the converter (31.54 dB reported,
    31.47 dB for the written file; 3.6 % of the codes differed). Now every FP8/NVFP4 column goes through the
    converter's quantization path: its error per layer equals the error of the file `convert` writes, decoded
    by comfy-kitchen's eager reference, bit for bit."""
    import comfy_kitchen as ck

    from quant.convert import convert
    from quant.safetensors_io import SafetensorsFile
    d, src, t, g = files
    cols = {c.label: c for c in lad.columns}
    for fmt in ("fp8", "nvfp4"):
        out = tmp_path / f"conv-{fmt}.safetensors"
        convert(src, out, fmt, force=True)
        col = cols[f"{fmt} wan22-ti2v-5b"]
        checked = 0
        with SafetensorsFile(out) as f, ck.use_backend("eager"):
            for n in lad.layers:
                w = t[n].float()
                L = n[: -len(".weight")]
                if col.what[n] == "fp8":
                    wq = ck.dequantize_per_tensor_fp8(f.get(f"{L}.weight"), f.get(f"{L}.weight_scale").reshape(()),
                                                      torch.float32)
                elif col.what[n] == "nvfp4":
                    wq = ck.dequantize_nvfp4(f.get(f"{L}.weight"), f.get(f"{L}.weight_scale_2").reshape(()),
                                             f.get(f"{L}.weight_scale"), torch.float32)[: w.shape[0], : w.shape[1]]
                else:
                    continue
                assert col.err2[n] == _err2(w, wq), (fmt, n)
                checked += 1
        assert checked == sum(1 for n in lad.layers if col.what[n] != "keep") > 0
