"""8-bit log-coded scales: files built here from the published description (uint8 codes, 255 levels over
1e-10..100, optionally one scale shared by related tensors), `verify` naming them and pointing to `repair`,
`repair` writing a file that passes `verify --source` while the input stays untouched."""
from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from harness.cli import main as cli_main
from quant import log_scales as L
from quant.safetensors_io import SafetensorsFile, save_file

KEEP = ("head.", "patch_embedding", "text_embedding", "time_embedding", "time_projection")


def _code(scale: float) -> int:
    """Encoder written from the description (independent of quant.log_scales.encode): the smallest of
    255 log-spaced levels over [1e-10, 100] that is >= scale."""
    c = math.ceil((math.log10(scale) + 10.0) / (12.0 / 254) - 1e-9)
    return max(0, min(254, c))


def _level(code: int) -> float:
    return 10.0 ** (-10.0 + code * 12.0 / 254)


def make_log8(src, out, *, shared: bool = False, layout: str = "legacy", code_override: int | None = None):
    """What a converter storing log-coded scales writes: fp8 e4m3 weights divided by the decoded scale,
    the scale's uint8 code as `<layer>.scale_weight` U8 [1] (legacy) or `.weight_scale` U8 [] (comfy_quant);
    with ``shared`` the self-attention q/k/v/o of a block share one code at `<block>.self_attn.scale_weight`."""
    with SafetensorsFile(src) as f:
        ws = {n: f.get(n) for n in f.keys()}
    t, groups = {}, {}
    for n, w in ws.items():
        if n.endswith(".weight") and w.dim() == 2 and not n.startswith(KEEP):
            la = n[:-7]
            g = la.rsplit(".", 1)[0] if shared and ".self_attn." in la else la
            groups.setdefault(g, []).append(la)
        else:
            t[n] = w
    suffix, shape = ("scale_weight", (1,)) if layout == "legacy" else ("weight_scale", ())
    for g, las in groups.items():
        amax = max(ws[la + ".weight"].abs().max().item() for la in las)
        code = _code(amax / 448.0) if code_override is None else code_override
        s = torch.tensor(_level(code), dtype=torch.float32)
        for la in las:
            t[la + ".weight"] = (ws[la + ".weight"].float() / s).clamp(-448, 448).to(torch.float8_e4m3fn)
        t[f"{g}.{suffix}"] = torch.tensor([code], dtype=torch.uint8).reshape(shape)
    meta = None
    if layout == "legacy":
        t["scaled_fp8"] = torch.empty(2, dtype=torch.float8_e4m3fn)
    else:
        layers = {la: {"format": "float8_e4m3fn", "full_precision_matrix_mult": True}
                  for las in groups.values() for la in las}
        meta = {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}
    save_file(t, out, meta)
    return out


def _run(capsys, *argv):
    rc = cli_main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_codes_match_the_description():
    codes = torch.arange(255, dtype=torch.uint8)
    s = L.decode(codes).double()
    assert s[0].item() == pytest.approx(1e-10, rel=1e-6) and s[-1].item() == pytest.approx(100.0, rel=1e-6)
    assert torch.all(s[1:] / s[:-1] > 1.1149) and torch.all(s[1:] / s[:-1] < 1.1151)     # 10**(12/254)
    assert torch.equal(L.encode(L.decode(codes).double(), ceil=False), codes)
    for x in (3.7e-4, 1e-3, 0.0123, 2.5):
        c = int(L.encode(x))
        assert c == _code(x) and L.decode(torch.tensor(c, dtype=torch.uint8)).item() >= x * (1 - 1e-6)


@pytest.mark.parametrize("shared,layout", [(False, "legacy"), (True, "legacy"), (True, "mixed")])
def test_verify_names_it_and_repair_fixes_it(tmp_path, capsys, thin_source, shared, layout):
    bad = make_log8(thin_source, tmp_path / "model_log8.safetensors", shared=shared, layout=layout)
    before = _sha(bad)
    rc, out, _ = _run(capsys, "verify", bad, "--source", thin_source)
    assert rc == 1
    line = next(x for x in out.splitlines() if "scale.log8" in x)
    assert line.startswith("error: scale.log8:")
    assert "ComfyUI cannot load this file" in line and f"quantgate repair {bad}" in line
    rc, out, _ = _run(capsys, "verify", bad, "--header-only", "--json")
    f = next(x for x in json.loads(out)["findings"] if x["rule"] == "scale.log8")
    with SafetensorsFile(thin_source) as src:             # the quantized Linears: 10 per block
        n_linear = sum(1 for n in src.keys() if n.endswith(".weight") and len(src.info(n).shape) == 2
                       and not n.startswith(KEEP))
    n_blocks = len({n.split(".")[1] for n in src.keys() if n.startswith("blocks.")})
    assert n_linear == 10 * n_blocks
    assert f["severity"] == "error" and len(f["layers"]) == n_linear
    if shared:                                            # one shared self-attention code per block
        assert f"{n_blocks} of them shared" in f["message"] and "blocks.0.self_attn.q" in f["layers"]

    fixed = tmp_path / "model_fixed.safetensors"
    rc, _, err = _run(capsys, "repair", bad, "-o", fixed, "--json")
    assert rc == 0, err
    assert _sha(bad) == before                                     # the input is untouched
    rc, out, _ = _run(capsys, "verify", fixed, "--source", thin_source)
    assert rc == 0, out
    assert "scale.log8" not in out
    suffix = "scale_weight" if layout == "legacy" else "weight_scale"
    with SafetensorsFile(bad) as a, SafetensorsFile(fixed) as b:
        codes = {k[: -len(suffix) - 1]: int(a.get(k).reshape(-1)[0]) for k in a.keys() if k.endswith("." + suffix)}
        fixed_scales = {k[: -len(suffix) - 1]: b.get(k) for k in b.keys() if k.endswith("." + suffix)}
        assert all(b.info(f"{la}.{suffix}").dtype == "F32" for la in fixed_scales)
        for la, s in fixed_scales.items():
            owner = la if la in codes else la.rsplit(".", 1)[0]         # a shared scale lives on the parent
            assert s.shape == ((1,) if layout == "legacy" else ())
            assert s.item() == pytest.approx(_level(codes[owner]), rel=1e-6)
        assert len(fixed_scales) == sum(1 for k in b.keys() if b.info(k).dtype == "F8_E4M3" and k.endswith(".weight"))
        for k in b.keys():                                         # every other tensor byte-identical
            if not k.endswith("." + suffix):
                assert a.raw(k) == b.raw(k), k
        assert a.metadata == b.metadata


@pytest.mark.parametrize("case", ["code-255", "nothing-coded", "output-exists", "missing", "out-is-in"])
def test_repair_bad_input_one_line_exit_2(tmp_path, capsys, thin_source, case):
    src = tmp_path / "in.safetensors"
    out = tmp_path / "out.safetensors"
    if case == "code-255":
        make_log8(thin_source, src, code_override=255)
    elif case == "nothing-coded":
        save_file({"blocks.0.ffn.0.weight": torch.zeros(4, 4)}, src)
    elif case in ("output-exists", "out-is-in"):
        make_log8(thin_source, src)
        out.write_bytes(b"keep me")
    if case == "out-is-in":
        out = src
    files = {p.name: _sha(p) for p in tmp_path.iterdir()}
    rc, stdout, err = _run(capsys, "repair", src if case != "missing" else tmp_path / "nope.safetensors", "-o", out)
    assert rc == 2 and not stdout
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {"code-255": "code 255", "nothing-coded": "no 8-bit log-coded scales", "output-exists": "output exists",
            "missing": "no such file", "out-is-in": "overwrite the input"}[case] in err
    assert {p.name: _sha(p) for p in tmp_path.iterdir()} == files                # nothing written, nothing changed
