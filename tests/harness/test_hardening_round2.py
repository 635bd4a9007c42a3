"""Issue 20, the data-loss classes: each test failed before the change named in its docstring (they were
run against main e6a8016 first). Commands run in-process (tests._inproc.run_main) unless a process is the point."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from tests._inproc import one_error_line, run_main

ROOT = Path(__file__).resolve().parents[2]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _leftovers(d: Path, name: str) -> list:
    return [p.name for p in d.iterdir() if p.name.startswith(f".{name}.")]


# ---- calibrate -o onto its own source / a FIFO (before: the model was replaced by a 16 KB JSON, exit 0;
# the FIFO was replaced) -- refused before any render, so no ComfyUI is needed to show it
def test_calibrate_never_writes_over_its_source(comfy_session, thin_source, tmp_path):
    """Against the session's real server (a renderable model): before, the copy of the model was replaced by
    the calibration JSON, exit 0."""
    import shutil
    src = tmp_path / "model_bf16.safetensors"
    shutil.copyfile(thin_source, src)
    comfy_session.server.add_model(src, "diffusion_models", src.name)
    comfy_session.vae()
    before = _sha(src)
    args = ("--comfy-url", comfy_session.client.url, "--seeds", "1", "--size", "64x64", "--bins", "1", "--force")
    line = one_error_line(*run_main("calibrate", src, "-o", src, *args)[::2])
    assert "would overwrite the input" in line and str(src) in line
    link = tmp_path / "link.json"
    os.link(src, link)                           # the source under another name
    line = one_error_line(*run_main("calibrate", src, "-o", link, *args)[::2])
    assert "would overwrite the input" in line
    assert _sha(src) == before
    fifo = tmp_path / "calib.json"              # before: rendered, then replaced the FIFO by the JSON, exit 0
    os.mkfifo(fifo)
    line = one_error_line(*run_main("calibrate", src, "-o", fifo, *args)[::2])
    assert "not a regular file" in line and str(fifo) in line
    assert fifo.is_fifo()


def test_calibrate_never_replaces_a_fifo(thin_wan5b, tmp_path):
    """Refused before any render (the same case against a renderable model: test_calibrate_never_writes_over_its_source)."""
    fifo = tmp_path / "calib.json"
    os.mkfifo(fifo)
    line = one_error_line(*run_main("calibrate", thin_wan5b, "-o", fifo, "--force")[::2])
    assert "not a regular file" in line and str(fifo) in line
    assert fifo.is_fifo()


# ---- nightly trend -o onto an input record (before: the record was overwritten with HTML, and any existing
# file was replaced without --force)
def _record(p: Path, when: str, med: float) -> Path:
    p.write_text(json.dumps({"machine_info": {"node": "n"}, "commit_info": {"id": "abc"}, "datetime": when,
                             "version": "4", "benchmarks": [{"name": "b", "stats": {"median": med}, "extra_info": {}}]}))
    return p


def test_nightly_trend_never_writes_over_a_record(tmp_path):
    a = _record(tmp_path / "a.json", "2026-11-01T00:00:00", 1.0)
    _record(tmp_path / "b.json", "2026-11-02T00:00:00", 1.1)
    before = a.read_bytes()
    for force in ((), ("--force",)):            # before: `-o DIR/a.json` replaced the record with HTML, exit 0
        line = one_error_line(*run_main("nightly", "trend", tmp_path, "-o", a, *force)[::2])
        assert "overwrite the input" in line and "a.json" in line
        assert a.read_bytes() == before
    other = tmp_path / "other.html"
    other.write_text("mine")
    line = one_error_line(*run_main("nightly", "trend", tmp_path, "-o", other)[::2])
    assert "--force" in line and other.read_text() == "mine"
    rc, _, err = run_main("nightly", "trend", tmp_path, "-o", other, "--force")
    assert rc == 0, err
    assert "<html>" in other.read_text()


@pytest.mark.parametrize("bad", [[1, 2], {"a": 1}, 20261101, "yesterday"], ids=["list", "object", "int", "text"])
def test_nightly_record_datetime_of_the_wrong_type(tmp_path, bad):
    """Before: mixed datetime types gave a traceback in `trend` (sorting), exit 1."""
    a = _record(tmp_path / "a.json", "2026-11-01T00:00:00", 1.0)
    b = tmp_path / "b.json"
    b.write_text(json.dumps({"machine_info": {}, "commit_info": {}, "datetime": bad,
                             "benchmarks": [{"name": "b", "stats": {"median": 1.0}}]}))
    line = one_error_line(*run_main("nightly", "trend", a, b, "-o", tmp_path / "t.html")[::2])
    assert "b.json" in line and "datetime" in line
    assert not (tmp_path / "t.html").exists()


# ---- an amax of 1e-300 / 1e300 (before: input_scale 0 or inf written, "converted", exit 0)
@pytest.mark.parametrize("amax", [1e-300, 1e300, 1e-40])
def test_input_scales_that_underflow_or_overflow_are_refused(thin_wan5b, tmp_path, amax):
    sc = tmp_path / "scales.json"
    sc.write_text(json.dumps({"layers": {"blocks.0.ffn.0": amax, "blocks.0.self_attn.q": 10.0}}))
    out = tmp_path / "o.safetensors"
    line = one_error_line(*run_main("convert", thin_wan5b, "-o", out, "-f", "nvfp4", "--input-scales", sc)[::2])
    assert "scales.json" in line and "blocks.0.ffn.0" in line and "input_scale" in line
    assert not out.exists() and not _leftovers(tmp_path, out.name)


def _calibration(path: Path, layers: list[str], amax: float, bad: str) -> Path:
    la = {n: {"in_features": 8, "calls": 1, "count": 8, "amax": (amax if n == bad else 4.0), "p99.9": 1.0}
          for n in layers}
    path.write_text(json.dumps({"schema": "quantgate.calibration/1", "percentiles": [99.9], "layers": la}))
    return path


@pytest.mark.parametrize("amax", [1e-300, 1e300])
def test_calibration_amax_that_underflows_or_overflows_is_refused(thin_wan5b, tmp_path, amax):
    from quant.convert import make_plan
    from quant.sources import open_source
    with open_source(thin_wan5b) as src:
        layers = [d.layer for d in make_plan(src, None, "fp8").quantized()]
    cal = _calibration(tmp_path / "calib.json", layers, amax, layers[0])
    out = tmp_path / "o.safetensors"
    line = one_error_line(*run_main("convert", thin_wan5b, "-o", out, "-f", "fp8", "--act-stats", cal)[::2])
    assert "calib.json" in line and layers[0] in line
    assert not out.exists() and not _leftovers(tmp_path, out.name)


def test_a_fifo_given_as_calibration_does_not_block(thin_wan5b, tmp_path):
    """Before: `convert --calibration FIFO` blocked forever in open()."""
    fifo = tmp_path / "calib.json"
    os.mkfifo(fifo)
    t = time.monotonic()
    line = one_error_line(*run_main("convert", thin_wan5b, "-o", tmp_path / "o.safetensors", "-f", "fp8",
                                    "--act-stats", fifo)[::2])
    assert "not a regular file" in line and time.monotonic() - t < 30


# ---- weights so small that their per-tensor scale underflows (before: an fp8 file with weight_scale 2.8e-45,
# a subnormal F32, "converted", exit 0)
def test_a_weight_scale_that_underflows_is_never_written(tmp_path):
    import torch

    from harness.fixtures.synth import make_model
    from quant.safetensors_io import SafetensorsFile, save_file
    src = make_model("wan22-ti2v-5b-thin", tmp_path / "m.safetensors", seed=1, dtype=torch.float32)
    with SafetensorsFile(src) as f:
        t, meta = {k: f.get(k).clone() for k in f.keys()}, dict(f.metadata)
    t["blocks.0.ffn.0.weight"].fill_(1e-42)
    tiny = tmp_path / "tiny.safetensors"
    save_file(t, tiny, meta)
    out = tmp_path / "o.safetensors"
    line = one_error_line(*run_main("convert", tiny, "-o", out, "-f", "fp8")[::2])
    assert "tiny.safetensors" in line and "blocks.0.ffn.0.weight_scale" in line and "subnormal" in line
    assert not out.exists() and not _leftovers(tmp_path, out.name)


# ---- a preset whose ndim is the string "2" (before: it matched nothing, an "fp8" file with nothing quantized)
def test_preset_with_a_string_ndim_is_refused(thin_wan5b, tmp_path):
    p = tmp_path / "p.toml"
    p.write_text('name = "p"\n[[rule]]\nmatch = ["*.bias", "*norm*", "*modulation", "patch_embedding.*", '
                 '"text_embedding.*", "time_embedding.*", "time_projection.*", "head.*"]\naction = "keep"\n'
                 '[[rule]]\nmatch = ["blocks.*"]\naction = "quant"\nndim = "2"\n[[rule]]\nmatch = ["*"]\naction = "keep"\n')
    out = tmp_path / "o.safetensors"
    line = one_error_line(*run_main("convert", thin_wan5b, "-o", out, "-f", "fp8", "--preset", p)[::2])
    assert "p.toml" in line and "ndim" in line and "integer" in line
    assert not out.exists()


# ---- two converts to one output without --force (before: both said "converted", one result lost)
def test_two_racing_converts_exactly_one_wins(thin_wan5b, tmp_path, monkeypatch):
    """Both converts pass the early "exists" check and are held at their final fsync until both got there;
    then both commit. The commit itself must refuse the second (rename without replace)."""
    from quant import outputs
    from quant.convert import convert
    from quant.errors import UsageError
    out = tmp_path / "o.safetensors"
    bar = threading.Barrier(2, timeout=120)
    real = os.fsync
    held = set()

    def fsync(fd):
        real(fd)
        name = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists(f"/proc/self/fd/{fd}") else ""
        tid = threading.get_ident()
        if f".{out.name}." in name and tid not in held:
            held.add(tid)
            bar.wait()
    monkeypatch.setattr(outputs.os, "fsync", fsync)
    res = {}

    def one(fmt):
        try:
            convert(thin_wan5b, out, fmt, pipelined=False)
            res[fmt] = "ok"
        except UsageError as e:
            res[fmt] = str(e)
    ts = [threading.Thread(target=one, args=(f,)) for f in ("fp8", "nvfp4")]
    [t.start() for t in ts]
    [t.join(300) for t in ts]
    assert sorted(v == "ok" for v in res.values()) == [False, True], res
    loser = next(v for v in res.values() if v != "ok")
    assert "exists" in loser and "--force" in loser
    winner = next(k for k, v in res.items() if v == "ok")
    from quant.safetensors_io import read_header
    assert read_header(out).metadata["quantgate.format"] == winner      # the file is the winner's, whole
    assert not _leftovers(tmp_path, out.name)


# ---- preset from-gguf with a DEL / a non-UTF-8 name (before: exit 2 but an unreadable TOML left behind; a GGUF
# with a Latin-1 file name could not make a preset at all)
def _gguf(path: Path, names: list[str]) -> Path:
    from tests._gguf_bytes import gguf, kv_string
    path.write_bytes(gguf([kv_string("general.architecture", "wan")],
                          [(n, (32, 4), 8, b"\0" * (4 * 34)) for n in names]))   # Q8_0 tensors, rows of 32
    return path


@pytest.mark.parametrize("case", ["del-in-tensor-name", "latin1-file-name", "surrogate-in-name"])
def test_preset_from_gguf_never_leaves_an_unreadable_toml(tmp_path, case):
    import tomllib

    from quant import presets
    names = ["blocks.0.ffn.0.weight", "blocks.0.ffn.2.weight"]
    gname, extra = "m.gguf", []
    if case == "del-in-tensor-name":
        names.append("blocks.0.x\x7fy.weight")
    elif case == "latin1-file-name":
        gname = os.fsdecode(b"caf\xe9-Q8_0.gguf")           # what Python makes of a Latin-1 byte in a path
    else:
        extra = ["--name", os.fsdecode(b"my\xff-preset")]   # what Python makes of such a byte in argv
    g = _gguf(tmp_path / gname, names)
    out = tmp_path / "p.toml"
    rc, _, err = run_main("preset", "from-gguf", g, "-o", out, *extra)
    if rc == 0:
        data = tomllib.loads(out.read_text(encoding="utf-8"))       # readable TOML ...
        back = presets.load(str(out))                               # ... and what convert reads
        assert {m for r in back.rules for m in r.match} >= {n.replace("[", "[[]") for n in names[:2]}
        if case == "latin1-file-name":
            assert data["provenance"]["gguf_file"] == "caf\\xe9-Q8_0.gguf"
        if case == "del-in-tensor-name":
            assert any("\x7f" in m for r in back.rules for m in r.match)
    else:
        one_error_line(rc, err)
        assert not out.exists()
    assert rc == 0, err                        # every case here can be written faithfully
    assert not _leftovers(tmp_path, out.name)
