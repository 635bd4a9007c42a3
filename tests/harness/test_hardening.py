"""Hostile inputs, files outside the model directory, outputs that destroy (issue 8).

Every planted input is built here. Commands run in-process (``tests._inproc.run_main``: exit code,
stdout, stderr; an unhandled exception fails the test as a traceback would fail a user), except
where a signal or a process death is the point.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests._gguf_bytes import gguf, kv_array, kv_scalar, kv_string
from tests._inproc import one_error_line, run_main
from quant.safetensors_io import save_file

ROOT = Path(__file__).resolve().parents[2]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A small source and its fp8 conversion (a checkpoint verify passes)."""
    from harness.fixtures.synth import make_model
    from quant.convert import convert
    d = tmp_path_factory.mktemp("pair")
    src = make_model("wan22-ti2v-5b-thin", d / "src_bf16.safetensors", seed=3, dtype=torch.bfloat16)
    ck = d / "ck_fp8.safetensors"
    convert(src, ck, "fp8")
    return src, ck


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from harness.fixtures.synth import make_sharded
    return make_sharded("wan22-ti2v-5b-thin", tmp_path_factory.mktemp("sh") / "model", n_shards=2, seed=4)


# ---- data loss -------------------------------------------------------------------------------------------
def test_record_never_replaces_an_input(pair, tmp_path):
    src, ck = pair
    before = {p: _sha(p) for p in (src, ck)}
    for target in (src, ck):
        line = one_error_line(*run_main("verify", ck, "--source", src, "--record", target)[::2])
        assert "overwrite the input" in line
    link = tmp_path / "hardlink.safetensors"
    os.link(src, link)                                      # the same file under another name
    line = one_error_line(*run_main("verify", ck, "--source", src, "--record", link)[::2])
    assert "overwrite the input" in line
    assert {p: _sha(p) for p in (src, ck)} == before
    rec = tmp_path / "gate.json"
    rc, _, err = run_main("verify", ck, "--source", src, "--record", rec, "--no-hash")
    assert rc == 0 and json.loads(rec.read_text())["passed"] is True, err
    assert not list(tmp_path.glob(".*partial"))


def test_record_onto_a_shard_of_the_source_index_is_refused(pair, shards):
    _, ck = pair
    shard = sorted(shards.glob("*.safetensors"))[0]
    h = _sha(shard)
    line = one_error_line(*run_main("verify", ck, "--source", shards, "--record", shard)[::2])
    assert "overwrite the input" in line and _sha(shard) == h


def test_outputs_that_are_special_files_are_refused_even_with_force(pair, tmp_path):
    src, ck = pair
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    for args in (("convert", src, "-o", fifo, "--force"), ("verify", ck, "--record", fifo)):
        line = one_error_line(*run_main(*args)[::2])         # returns at once: a FIFO is never opened
        assert "not a regular file" in line
        assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    line = one_error_line(*run_main("convert", src, "-o", "/dev/null", "--force")[::2])
    assert "not a regular file" in line and stat.S_ISCHR(os.stat("/dev/null").st_mode)
    line = one_error_line(*run_main("convert", src, "-o", tmp_path, "--force")[::2])
    assert "is a directory" in line


def test_convert_refuses_an_output_that_is_the_input_under_another_name(pair, tmp_path):
    src, _ = pair
    link = tmp_path / "same.safetensors"
    os.link(src, link)
    h = _sha(src)
    line = one_error_line(*run_main("convert", src, "-o", link, "--force")[::2])
    assert "overwrite the input" in line and _sha(src) == h


def _index(d: Path, wm, name="model.safetensors.index.json", extra=None) -> Path:
    p = d / name
    p.write_text(json.dumps({"metadata": {"total_size": 1}, **(extra or {}), "weight_map": wm}))
    return p


def test_index_shards_must_stay_inside_the_index_directory(shards, tmp_path):
    wm = json.loads(next(shards.glob("*.index.json")).read_text())["weight_map"]
    files = sorted(set(wm.values()))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / files[0]).write_bytes((shards / files[0]).read_bytes())
    d = tmp_path / "idx"
    d.mkdir()
    (d / files[1]).write_bytes((shards / files[1]).read_bytes())
    variants = {
        "dotdot": {k: (f"../elsewhere/{v}" if v == files[0] else v) for k, v in wm.items()},
        "absolute": {k: (str(elsewhere / v) if v == files[0] else v) for k, v in wm.items()},
    }
    for label, m in variants.items():
        idx = _index(d, m)
        line = one_error_line(*run_main("plan", idx)[::2])
        assert "outside the index's directory" in line, label
        out = tmp_path / f"o_{label}.safetensors"
        one_error_line(*run_main("convert", idx, "-o", out, "--preset", "smart")[::2])
        assert not out.exists()
        rc, _, err = run_main("plan", idx, "--allow-outside")           # the escape hatch
        assert rc == 0, err
    (d / files[0]).symlink_to(elsewhere / files[0])                     # a symlink out of the directory
    idx = _index(d, wm)
    line = one_error_line(*run_main("inspect", idx)[::2])
    assert "symlink" in line and "outside" in line
    assert run_main("inspect", idx, "--allow-outside")[0] == 0
    idx.unlink()
    line = one_error_line(*run_main("inspect", d)[::2])                 # a shard directory, no index
    assert "symlink" in line


def test_no_byte_of_a_foreign_file_is_echoed(tmp_path):
    secret = b"TOPSECRETpassword=hunter2\n"
    d = tmp_path / "m"
    d.mkdir()
    (d / "notes.txt").write_bytes(secret)
    idx = _index(d, {"a.weight": "notes.txt"})
    small = tmp_path / "small.bin.safetensors"
    small.write_bytes(struct.pack("<Q", 5000) + b"{}")      # a plausible length that runs past the end
    for args in (("inspect", idx), ("inspect", d / "notes.txt"), ("verify", small)):
        line = one_error_line(*run_main(*args)[::2])
        for n in (struct.unpack("<Q", secret[:8])[0], 5000):
            assert str(n) not in line and f"{n:,}" not in line, line
        assert "TOPSECRET" not in line and "hunter2" not in line


# ---- the gate never hands a pickle to ComfyUI ---------------------------------------------------------------
def test_gate_refuses_pickles_before_any_server(pair, tmp_path):
    from harness.comfy import server
    src, ck = pair
    pk = tmp_path / "model.ckpt"
    torch.save({"w": torch.zeros(2)}, pk)
    disguised = tmp_path / "pickle.safetensors"
    disguised.write_bytes(pk.read_bytes())
    live_before = set(server._LIVE)      # a session-scoped server of another test may already run
    t0 = time.monotonic()
    for args in (("gate", ck, "--source", pk), ("gate", pk, "--source", src), ("gate", disguised, "--source", src),
                 ("gate", ck, "--source", shards_dir_placeholder(tmp_path))):
        rc, out, err = run_main(*args, "--out", tmp_path / "rep")
        line = one_error_line(rc, err)
        assert "pickle" in line or "not a safetensors" in line or "not a file" in line, line
        assert "starting ComfyUI" not in err
    assert time.monotonic() - t0 < 30 and not set(server._LIVE) - live_before     # no server was started
    assert not (tmp_path / "rep").exists()


def shards_dir_placeholder(tmp_path: Path) -> Path:
    d = tmp_path / "a_dir"
    d.mkdir(exist_ok=True)
    return d


# ---- empty and malformed sources ----------------------------------------------------------------------------
def test_sources_without_tensors_are_refused(tmp_path):
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(struct.pack("<Q", 2) + b"{}")        # the safetensors library reads it: no tensors
    line = one_error_line(*run_main("verify", empty)[::2])
    assert "no tensors" in line
    d = tmp_path / "idx"
    d.mkdir()
    idx = _index(d, {})
    g = tmp_path / "zero.gguf"
    g.write_bytes(gguf([kv_string("general.architecture", "wan")], []))
    for src in (idx, g, empty):
        out = tmp_path / "out.safetensors"
        line = one_error_line(*run_main("convert", src, "-o", out)[::2])
        assert "no tensors" in line or "empty" in line, line
        assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.parametrize("label,text", [
    ("list value", '{"weight_map": {"a.weight": ["x.safetensors"]}}'),
    ("dict value", '{"weight_map": {"a.weight": {"file": "x.safetensors"}}}'),
    ("number value", '{"weight_map": {"a.weight": 3}}'),
    ("nested 100,000 deep", '{"weight_map": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    ("nested 1,000 deep", '{"x": ' + "[" * 1000 + "]" * 1000 + ', "weight_map": {}}'),
    ("5,000-digit int", '{"metadata": {"total_size": ' + "9" * 5000 + '}, "weight_map": {"a": "b"}}'),
    ("NaN", '{"metadata": {"total_size": NaN}, "weight_map": {"a": "b"}}'),
    ("lone surrogate", '{"weight_map": {"\\ud800": "b.safetensors"}}'),
    ("not UTF-8", b'{"weight_map": {"\xff": "b"}}'),
])
def test_hostile_index_json(tmp_path, label, text):
    idx = tmp_path / "m.index.json"
    idx.write_bytes(text if isinstance(text, bytes) else text.encode())
    line = one_error_line(*run_main("plan", idx)[::2])
    assert "m.index.json" in line and len(line) < 400, line


@pytest.mark.parametrize("text", [
    '{"layers": {"blocks.0.ffn.0": ' + "7" * 5000 + "}}",
    '{"layers": {"blocks.0.ffn.0": 1' + "0" * 400 + "}}",
    '{"layers": {"blocks.0.ffn.0": NaN}}',
    '{"layers": {"blocks.0.ffn.0": true}}',
    '{"layers": ' + "[" * 100_000 + "]" * 100_000 + "}",
])
def test_hostile_input_scales(pair, tmp_path, text):
    src, _ = pair
    js = tmp_path / "scales.json"
    js.write_text(text)
    out = tmp_path / "o.safetensors"
    line = one_error_line(*run_main("convert", src, "-o", out, "--input-scales", js)[::2])
    assert "scales.json" in line and not out.exists()


# ---- GGUF ---------------------------------------------------------------------------------------------------
ARCH = kv_string("general.architecture", "wan")
F32 = 0


def _f32(n: int) -> bytes:
    return b"\0" * (4 * n)


@pytest.mark.parametrize("tname,tid,nbytes", [("I8", 24, 32), ("I16", 25, 64), ("I32", 26, 128), ("I64", 27, 256),
                                              ("F64", 28, 256), ("Q8_K", 15, 292), ("Q8_1", 9, 40)])
def test_gguf_types_gguf_py_cannot_dequantize(tmp_path, tname, tid, nbytes):
    n = 256 if tname == "Q8_K" else 32
    g = tmp_path / "t.gguf"
    g.write_bytes(gguf([ARCH], [("w.weight", (n,), tid, b"\0" * nbytes)]))
    line = one_error_line(*run_main("inspect", g)[::2])
    assert tname in line and "cannot dequantize" in line


@pytest.mark.parametrize("label,kv", [
    ("string", lambda: kv_string("comfy.gguf.orig_shape.w.weight", "[4, 8]")),
    ("does not fit", lambda: kv_array("comfy.gguf.orig_shape.w.weight", "i32", [3, 7])),
    ("huge", lambda: kv_array("comfy.gguf.orig_shape.w.weight", "u64", [2**40, 2**40, 2**40])),
    ("zero", lambda: kv_array("comfy.gguf.orig_shape.w.weight", "i32", [0, 32])),
    ("negative", lambda: kv_array("comfy.gguf.orig_shape.w.weight", "i64", [-4, -8])),
    ("empty", lambda: kv_array("comfy.gguf.orig_shape.w.weight", "i32", [])),
])
def test_gguf_bad_orig_shape(tmp_path, label, kv):
    g = tmp_path / "t.gguf"
    g.write_bytes(gguf([ARCH, kv()], [("w.weight", (32,), F32, _f32(32))]))
    line = one_error_line(*run_main("inspect", g)[::2])
    assert "orig_shape" in line, label


def test_gguf_good_orig_shape_is_used(tmp_path):
    g = tmp_path / "t.gguf"
    g.write_bytes(gguf([ARCH, kv_array("comfy.gguf.orig_shape.w.weight", "i32", [4, 8])],
                       [("w.weight", (32,), F32, _f32(32))]))
    from quant.sources import open_source
    with open_source(g) as s:
        assert s.info("w.weight").shape == (4, 8)


@pytest.mark.parametrize("label,make", [
    ("array of 2^32", lambda: gguf([ARCH, kv_array("x", "u8", [], declared_count=2**32)], [])),
    ("array of 2^60", lambda: gguf([ARCH, kv_array("x", "u32", [1, 2], declared_count=2**60)], [])),
    ("array of 2^32 strings", lambda: gguf([ARCH, kv_array("x", "str", ["a"], declared_count=2**32)], [])),
    ("string of 2^60", lambda: gguf([kv_string("general.architecture", "wan", declared_len=2**60)], [])),
    ("2^60 tensors", lambda: gguf([ARCH], [("w", (32,), F32, _f32(32))], n_tensors=2**60)),
    ("2^32 keys", lambda: gguf([ARCH], [], n_kv=2**32)),
    ("zero dimension", lambda: gguf([ARCH], [("w.weight", (0, 32), F32, b"")])),
    ("data past the end", lambda: gguf([ARCH], [("w.weight", (64, 64), F32, _f32(32))])),
    ("dims that wrap", lambda: gguf([ARCH], [("w.weight", (2**32, 2**32), F32, _f32(32))])),
    ("unknown type", lambda: gguf([ARCH], [("w.weight", (32,), 99, _f32(32))])),
    ("version 7", lambda: gguf([ARCH], [], version=7)),
    ("architecture an empty array", lambda: gguf([kv_array("general.architecture", "u8", [])],    # fuzzer-found
                                                 [("w", (32,), F32, _f32(32))])),
])
def test_gguf_counts_and_lengths_bounded_by_the_file(tmp_path, label, make):
    g = tmp_path / "t.gguf"
    g.write_bytes(make())
    t0 = time.monotonic()
    line = one_error_line(*run_main("inspect", g)[::2])
    assert time.monotonic() - t0 < 5, label          # gguf-py alone loops (and allocates) for minutes
    assert "t.gguf" in line and len(line) < 400, line


# ---- scale: linear findings, long names ---------------------------------------------------------------------
def test_findings_add_is_linear():
    from harness.verify.findings import Findings

    def cost(n: int) -> float:
        best = 1e9
        for _ in range(5):
            f = Findings()
            t0 = time.perf_counter()
            for i in range(n):
                f.error("tensor.dtype", "{n} tensors are not float", f"blocks.{i}.weight")
            best = min(best, time.perf_counter() - t0)
            assert len(f.all()[0].layers) == n
        return best

    c10, c100 = cost(10_000), cost(100_000)
    assert c100 / c10 < 50, (c10, c100)             # quadratic: ~100x (and minutes at 100k)
    assert c100 < 5


def test_verify_of_20k_tensors_is_fast(tmp_path):
    """20,000 I8 tensors (each a finding's layer) verify in seconds (30k was 8.7 s when quadratic)."""
    p = tmp_path / "many.safetensors"
    save_file({f"blocks.{i}.x.weight": torch.zeros(1, dtype=torch.int8) for i in range(20_000)}, p)
    t0 = time.perf_counter()
    rc, out, err = run_main("verify", p, "--header-only")
    assert rc in (0, 1), err
    assert time.perf_counter() - t0 < 20


def test_long_tensor_names_are_cut_in_messages(tmp_path):
    name = "x" * 300_000
    p = tmp_path / "long.safetensors"
    save_file({name: torch.zeros(4, 4)}, p)
    for args in (("plan", p, "--preset", "wan22-ti2v-5b"), ("verify", p, "--strict")):
        rc, out, err = run_main(*args)
        assert len(err) < 3000 and all(len(ln) < 3000 for ln in out.splitlines()), (args, len(err), len(out))
    p2 = tmp_path / "dup"
    p2.mkdir()
    save_file({name: torch.zeros(1)}, p2 / "a.safetensors")
    save_file({name: torch.zeros(1)}, p2 / "b.safetensors")
    line = one_error_line(*run_main("inspect", p2)[::2])
    assert "300,000 chars" in line and len(line) < 500


# ---- signals and leftovers -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """About 3 s of nvfp4 conversion on this box (enough time to signal it mid-write)."""
    g = torch.Generator().manual_seed(0)
    t = {f"blocks.{i}.ffn.weight": torch.randn(2048, 2048, generator=g).to(torch.bfloat16) for i in range(12)}
    p = tmp_path_factory.mktemp("slow") / "slow_bf16.safetensors"
    save_file(t, p)
    return p


def _cli_popen(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("QUANTGATE_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_partial(proc, out: Path, timeout=120) -> Path:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        parts = list(out.parent.glob(f".{out.name}.quantgate-{proc.pid}-*.partial"))
        if parts and parts[0].stat().st_size > 0:
            return parts[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("no partial file appeared")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_during_convert_behave_like_ctrl_c(slow_model, tmp_path, sig):
    out = tmp_path / "out.safetensors"
    proc = _cli_popen("convert", slow_model, "-o", out, "--format", "nvfp4", "--preset", "smart")
    _wait_partial(proc, out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert f"terminated ({sig.name})" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".*"))


def test_partial_left_by_sigkill_is_removed_by_the_next_run(slow_model, pair, tmp_path):
    out = tmp_path / "out.safetensors"
    proc = _cli_popen("convert", slow_model, "-o", out, "--format", "nvfp4", "--preset", "smart")
    part = _wait_partial(proc, out)
    proc.kill()
    proc.wait()
    assert part.exists() and not out.exists()                 # what SIGKILL leaves
    other = tmp_path / f".{out.name}.someone-else.partial"     # not our naming: never touched
    other.write_bytes(b"x")
    rc, _, err = run_main("convert", pair[0], "-o", out)       # the next run on the same output
    assert rc == 0, err
    assert not part.exists() and other.exists() and out.exists()
    assert "removed a stale partial file" in err and part.name in err


def test_stale_partials_only_of_dead_processes(tmp_path):
    from quant.outputs import remove_stale_partials
    out = tmp_path / "x.safetensors"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    a = tmp_path / f".x.safetensors.quantgate-{dead.pid}-abc123.partial"
    b = tmp_path / ".x.safetensors.quantgate-1-abc123.partial"          # pid 1 is alive
    c = tmp_path / f".y.safetensors.quantgate-{dead.pid}-abc123.partial"  # another output's
    for p in (a, b, c):
        p.write_bytes(b"0" * 10)
    msgs = []
    assert remove_stale_partials(out, log=msgs.append) == [a]
    assert b.exists() and c.exists() and len(msgs) == 1


def test_render_temp_base_of_a_killed_process_is_removed_at_the_next_start(tmp_path):
    from harness.comfy import temp_bases
    from harness.comfy.errors import ComfyError
    from harness.render.session import open_session
    code = ("from harness.comfy import temp_bases; p = temp_bases.make('comfy'); (p / 'models').mkdir(); "
            "(p / 'models' / 'x').write_bytes(b'1' * 1000); print(p, flush=True); import time; time.sleep(120)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    base = Path(proc.stdout.readline().strip())
    proc.kill()                                       # SIGKILL: no finally, no atexit
    proc.wait()
    assert base.is_dir() and str(proc.pid) in base.name
    mine = temp_bases.make("comfy")                   # a live process's base stays
    try:
        logs = []
        with pytest.raises(ComfyError):               # any start of a render session sweeps first
            with open_session(comfy_root=tmp_path / "not-comfy", log=logs.append):
                pass
        assert not base.exists() and mine.is_dir()
        assert any(str(base) in m for m in logs)
    finally:
        import shutil
        shutil.rmtree(mine, ignore_errors=True)


# ---- light commands do not pay for torch ---------------------------------------------------------------------
def test_light_commands_do_not_import_torch(pair):
    """--version, --help, formats, manifest and header-only verify run without importing torch
    (about 2 s and 650 MB of start-up before, see notes/harden.md)."""
    _, ck = pair
    code = f"""
import contextlib, io, sys
import harness.cli
from harness.cli import main
for argv in (["--version"], ["--help"], ["convert", "--help"], ["formats"], ["manifest", "list"],
             ["verify", {str(ck)!r}, "--header-only"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    assert rc in (0, None), (argv, rc)
    heavy = sorted(m for m in ("torch", "comfy_kitchen", "matplotlib", "gguf") if m in sys.modules)
    assert not heavy, (argv, heavy)
print("light")
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "light", r.stderr[-2000:]
