"""quant.startup: the start-up of `convert --device cuda` overlapped with the first reads (page-cache prefetch in
the pipeline's read order, bounded lead; CUDA + kernel warm-up). The GPU half runs on the GPU box
(tests/test_gpu_new_formats.py); here the prefetcher and the CLI hook."""
from __future__ import annotations

import json
import time

import pytest
import torch

from quant import startup
from quant.sources import open_source


@pytest.fixture()
def model(tmp_path):
    from harness.fixtures.synth import make_model
    return make_model("wan21-t2v-tiny", tmp_path / "m.safetensors", dtype=torch.float32)


def _spans(path):
    with open_source(path) as src:
        return [src.span(n) for n in src.keys()]


def _wait(cond, timeout=30.0):
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_prefetch_reads_in_the_pipelines_order_and_stays_within_its_lead(model):
    spans = _spans(model)
    total = sum(e - b for _, b, e in spans)
    lead = max(total // 5, 1 << 20)
    w = startup.Warmup(model, "cuda", "fp8", lead=lead)
    w._read.start()                                    # the prefetcher alone (no GPU here)
    _wait(lambda: w._opened.is_set())
    assert w._spans == spans                           # source key order = the pipeline's read order
    assert [(d, s) for d, s in w._dtype_shapes][:1] and all(len(s) == 2 for _, s in w._dtype_shapes)
    time.sleep(0.3)
    block = max(startup.MIN_BLOCK, min(startup.READ_BLOCK, lead))
    assert 0 < w.prefetched <= lead + 2 * block and w._read.is_alive()    # waits for the pipeline: memory bounded
    for _f, b, e in spans:                             # the pipeline reads on
        w.consumed(e - b)
    w._read.join(30)
    assert not w._read.is_alive() and total <= w.prefetched <= total + model.stat().st_size and not w.errors


def test_runs_merge_adjacent_spans_and_split_big_ones(monkeypatch):
    monkeypatch.setattr(startup, "READ_BLOCK", 100)
    monkeypatch.setattr(startup, "MIN_BLOCK", 1)
    w = startup.Warmup("x", "cuda", "fp8", lead=1 << 30)
    w._spans = [("a", 0, 30), ("a", 30, 60), ("a", 60, 350), ("b", 0, 10), ("a", 400, 410)]
    runs = list(w._runs())
    assert runs == [("a", 0, 60), ("a", 60, 160), ("a", 160, 260), ("a", 260, 350), ("b", 0, 10), ("a", 400, 410)]
    assert sum(e - b for _, b, e in runs) == sum(e - b for _, b, e in w._spans)


def test_a_refused_source_is_left_to_the_conversion(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    w = startup.Warmup(bad, "cuda", "fp8")
    w._read.start()
    w._read.join(30)
    assert w.prefetched <= bad.stat().st_size and w.errors and w.errors[0].startswith("open: ")


def test_the_head_start_reads_only_regular_files_of_the_sources_directory(tmp_path):
    (tmp_path / "a.safetensors").symlink_to("/etc/hostname")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    idx = tmp_path / "model.safetensors.index.json"
    assert startup.Warmup(idx, "cuda", "fp8").first_file() == str(tmp_path / "b.safetensors")
    assert startup.Warmup(tmp_path, "cuda", "fp8").first_file() == str(tmp_path / "b.safetensors")
    assert startup.Warmup(tmp_path / "a.safetensors", "cuda", "fp8").first_file() is None


def test_off_switch_and_cpu_devices_start_nothing(monkeypatch, model):
    monkeypatch.setattr(startup, "_CURRENT", None)
    assert startup.begin(model, "cpu", "fp8") is None
    monkeypatch.setenv("QUANTGATE_WARMUP", "0")
    assert startup.begin(model, "cuda", "fp8") is None and startup.current() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cli_convert_cuda_without_a_gpu_starts_the_warmup_and_still_refuses_in_one_line(monkeypatch, model, tmp_path):
    from tests._inproc import one_error_line, run_main
    monkeypatch.setattr(startup, "_CURRENT", None)
    tl = tmp_path / "timeline.json"
    monkeypatch.setenv("QUANTGATE_TIMELINE", str(tl))
    out = tmp_path / "o.safetensors"
    rc, _, err = run_main("convert", model, "-o", out, "-f", "mxfp8", "--device", "cuda", "-q")
    assert "no CUDA device" in one_error_line(rc, err)
    assert not out.exists()
    w = startup.current()
    assert w is not None and w.target == "mxfp8" and w.source == str(model)
    w._read.join(30)
    assert w._stop and not w._read.is_alive()          # the command's end stopped the prefetcher
    startup.write_timeline()
    pts = json.loads(tl.read_text())["points_s"]
    assert {"entry", "warmup_started", "parsed"} <= set(pts) and pts["warmup_started"] <= pts["parsed"]


def test_library_record_and_preload(monkeypatch, tmp_path, model):
    """QUANTGATE_PRELOAD_LIBS=1: the resident ranges of this process's shared libraries (torch's among them) are
    recorded and read back first by the next prefetcher; a library changed since (size or mtime) is skipped."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("QUANTGATE_PRELOAD_LIBS", "1")
    assert startup.record_libs() > 0
    whole = json.loads((tmp_path / "cache" / "quantgate" / "startup-libs.json").read_text())
    rec, mods = whole["libs"], whole["modules"]
    assert any("torch" in lib["path"] for lib in rec)
    for lib in rec:
        assert all(0 <= b < e <= lib["size"] for b, e in lib["ranges"])
    # the Python files of the imported modules (torch's .pyc among them), whole, after the libraries
    assert any("/torch/" in m["path"] and m["path"].endswith((".pyc", ".py")) for m in mods)
    assert all(0 < m["size"] <= startup.MODULE_FILE_MAX for m in mods)
    ranges = startup.recorded_lib_ranges()
    assert ranges and sum(e - b for _, b, e in ranges) == \
        sum(e - b for lib in rec for b, e in lib["ranges"]) + sum(m["size"] for m in mods)
    assert [p for p, _, _ in ranges[-len(mods):]] == [m["path"] for m in mods]
    total = sum(e - b for _, b, e in ranges)
    w = startup.Warmup(model, "cuda", "fp8")
    w._read.start()
    _wait(lambda: w.preloaded >= total, timeout=120)
    w.stop()
    w._read.join(30)
    assert w.preloaded == total and not w.errors
    rec[0]["mtime_ns"] += 1
    mods[0]["size"] += 1
    bad = [{"path": "/etc/hostname", "size": 1, "mtime_ns": 0}, {"path": 7}, "x"]   # not a module file; malformed
    (tmp_path / "cache" / "quantgate" / "startup-libs.json").write_text(
        json.dumps({"libs": rec[:1], "modules": mods[:1] + bad}))
    assert startup.recorded_lib_ranges() == []
