"""Planted defects of every kind are caught by the right rule with the right exit code; good files
(quant.convert, hand-made with quant.kernels.fp8, the peer tool convert_to_quant) pass."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from harness.cli import main
from harness.verify import verify
from harness.fixtures.planted import format_defects as P


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return P.make_sources(tmp_path_factory.mktemp("verify"))


@pytest.fixture(scope="module")
def planted(files, tmp_path_factory):
    d = tmp_path_factory.mktemp("planted")
    out = {}
    for name, (good, fn, *_rest) in {**P.PLANTED, **P.WARNINGS}.items():
        t, m = P.load(files[good])
        t, m = fn(t, m)
        out[name] = P.save(t, m, d / (name.replace(" ", "_").replace("/", "_") + ".safetensors"))
    return out


def _run(capsys, *argv):
    rc = main(["verify", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.mark.parametrize("fmt", ["fp8-legacy", "fp8", "nvfp4", "nvfp4-in"])
def test_converter_output_passes(files, fmt, capsys):
    rc, out, _ = _run(capsys, files[fmt], "--source", files["src"], "--strict")
    assert rc == 0, out
    rep = verify(files[fmt])                      # statistics mode, no source
    assert rep.passed and rep.mode == "statistics", rep.lines()
    assert "stats.note" in rep.findings.rules()   # says that it is plausibility only


def test_handmade_fp8_passes(files, tmp_path, capsys):
    p = P.handmade_fp8(tmp_path, files["src"])
    rc, out, _ = _run(capsys, p, "--source", files["src"], "--strict")
    assert rc == 0, out


@pytest.mark.parametrize("name", list(P.PLANTED))
def test_planted_defect_caught(name, planted, files, capsys):
    good, _fn, rule, needs_source = P.PLANTED[name]
    args = [planted[name], "--source", files["src"]]
    rc, out, err = _run(capsys, *args, "--json")
    rep = json.loads(out)
    rules = {f["rule"] for f in rep["findings"] if f["severity"] == "error"}
    assert rc == 1, (name, out, err)
    assert rule in rules, (name, rules)
    if not needs_source:     # caught without the source too (header rules or statistics)
        rep2 = verify(planted[name])
        assert rule in rep2.findings.rules("error"), (name, rep2.lines())


def test_diagnoses_name_the_cause(planted, files):
    msg = {n: " ".join(f.text() for f in verify(planted[n], files["src"]).findings.all()
                       if f.rule == "numeric.mismatch")
           for n in ("swapped nibbles", "row-major block scales", "e5m2 data declared e4m3")}
    assert "nibbles are swapped" in msg["swapped nibbles"]
    assert "row-major" in msg["row-major block scales"]
    assert "e5m2" in msg["e5m2 data declared e4m3"]


def test_unit_and_inverted_scale_numeric(planted, files):
    for n in ("unit scale", "inverted scale", "inverted weight_scale_2"):
        rep = verify(planted[n], files["src"])
        f = [x for x in rep.findings.all() if x.rule == "numeric.mismatch"]
        assert f and "factor" in f[0].text() and f[0].layers == [P.LAYER], (n, rep.lines())


@pytest.mark.parametrize("name", list(P.WARNINGS))
def test_warnings_pass_unless_strict(name, planted, capsys):
    rule = P.WARNINGS[name][2]
    rc, out, _ = _run(capsys, planted[name])
    assert rc == 0, out
    wl = [line for line in out.splitlines() if rule in line]
    assert wl and all("warning" in line for line in wl), out
    rc, out, _ = _run(capsys, planted[name], "--strict")
    assert rc == 1 and f"error: {rule}" in out


def test_findings_grouped_one_line(planted, capsys):
    rc, out, _ = _run(capsys, planted["fp8 without input_scale or full_precision_matrix_mult"])
    lines = [line for line in out.splitlines() if "activation.policy" in line]
    assert len(lines) == 1 and "20 layers" in lines[0], out


def test_header_only_no_data_read(planted, files):
    rep = verify(planted["swapped nibbles"], header_only=True)
    assert rep.passed and rep.mode == "header-only" and rep.bytes_checked == 0


def test_min_comfy(files):
    # the KJ recipe keeps Linears (embeddings, head) in high precision: exact only from ComfyUI 0.4.0
    assert verify(files["fp8-legacy"], header_only=True).min_comfy == "0.4.0"
    assert verify(files["fp8"], header_only=True).min_comfy == "0.4.0"
    assert verify(files["nvfp4"], header_only=True).min_comfy == "0.8.0"


# ---- unreadable inputs: exit 2, one line, no traceback ---------------------------------------
def _bad_files(tmp_path, good):
    data = good.read_bytes()
    out = {"truncated": data[: len(data) // 2], "2^60 header": struct.pack("<Q", 2**60) + data[8:64],
           "empty": b"", "random": bytes(range(256)) * 4}
    hdr = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()
    hdr += b" " * (-len(hdr) % 8)
    out["overlapping offsets"] = struct.pack("<Q", len(hdr)) + hdr + bytes(12)
    paths = {}
    for k, v in out.items():
        p = tmp_path / (k.replace(" ", "_").replace("^", "") + ".safetensors")
        p.write_bytes(v)
        paths[k] = p
    paths["missing"] = tmp_path / "nope.safetensors"
    paths["directory without files"] = tmp_path / "emptydir"
    paths["directory without files"].mkdir()
    return paths


def test_unreadable_inputs_exit_2_one_line(files, tmp_path, capsys):
    for name, p in _bad_files(tmp_path, files["fp8"]).items():
        rc, out, err = _run(capsys, p)
        assert rc == 2, (name, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err + out, (name, err)
    rc, out, err = _run(capsys, files["fp8"], "--source", tmp_path / "missing-source.safetensors")
    assert rc == 2 and len(err.strip().splitlines()) == 1


def test_subprocess_2_60_header_no_traceback(tmp_path):
    p = tmp_path / "huge.safetensors"
    p.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    r = subprocess.run([sys.executable, "-m", "harness", "verify", str(p)], capture_output=True, text=True,
                       cwd=str(__import__("pathlib").Path(__file__).resolve().parents[3]))
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "not a safetensors file" in r.stderr and str(2**60) not in r.stderr     # no file bytes echoed


def test_record(files, tmp_path, capsys):
    rec_path = tmp_path / "gate.json"
    rc, out, _ = _run(capsys, files["fp8"], "--source", files["src"], "--record", rec_path)
    assert rc == 0
    rec = json.loads(rec_path.read_text())
    import hashlib
    assert rec["checkpoint"]["sha256"] == hashlib.sha256(files["fp8"].read_bytes()).hexdigest()
    assert rec["source"]["sha256"] == hashlib.sha256(files["src"].read_bytes()).hexdigest()
    assert rec["passed"] is True and rec["min_comfy"] == "0.4.0" and rec["tool_version"]
    assert isinstance(rec["findings"], list)
