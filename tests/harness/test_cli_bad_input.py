"""Bad input never gives a traceback or a partial output: one line naming the file, exit 2."""
import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest
import torch

from quant.safetensors_io import save_file

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _assert_clean_failure(r, path_fragment, out, code=2):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert lines[0].startswith("quantgate: ") and path_fragment in lines[0], lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "temp file left behind"


def _copy(src, dst, n=None):
    data = src.read_bytes()
    dst.write_bytes(data if n is None else data[:n])
    return dst


def test_truncated_file(cli, thin_wan5b, tmp_path):
    bad = _copy(thin_wan5b, tmp_path / "trunc.safetensors", n=thin_wan5b.stat().st_size - 1000)
    out = tmp_path / "o.safetensors"
    r = cli("convert", bad, "-o", out, "--format", "nvfp4")
    _assert_clean_failure(r, "trunc.safetensors", out)
    assert "truncated" in r.stderr or "past the end" in r.stderr


def test_bad_json_header(cli, tmp_path):
    bad = tmp_path / "badjson.safetensors"
    hdr = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]'   # unterminated
    bad.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 4)
    out = tmp_path / "o.safetensors"
    r = cli("convert", bad, "-o", out)
    _assert_clean_failure(r, "badjson.safetensors", out)
    assert "JSON" in r.stderr


def test_absurd_header_length(cli, tmp_path):
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    out = tmp_path / "o.safetensors"
    r = cli("convert", bad, "-o", out)
    _assert_clean_failure(r, "huge.safetensors", out)


def test_unknown_dtype(cli, tmp_path):
    bad = tmp_path / "dtype.safetensors"
    hdr = json.dumps({"w": {"dtype": "F5", "shape": [2, 2], "data_offsets": [0, 2]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0\0")
    out = tmp_path / "o.safetensors"
    r = cli("convert", bad, "-o", out)
    _assert_clean_failure(r, "dtype.safetensors", out)
    assert "unknown dtype 'F5'" in r.stderr
    # F4 is valid safetensors (the library reads it) but nothing quantgate handles: said so, exit 2
    hdr = json.dumps({"w": {"dtype": "F4", "shape": [2, 2], "data_offsets": [0, 2]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0\0")
    r = cli("convert", bad, "-o", out)
    _assert_clean_failure(r, "dtype.safetensors", out)
    assert "dtype F4 is valid safetensors but not supported" in r.stderr


def test_missing_shard(cli, tmp_path):
    from harness.fixtures.synth import make_sharded
    d = make_sharded("wan22-ti2v-5b-thin", tmp_path / "shards", n_shards=3, seed=2)
    (d / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    out = tmp_path / "o.safetensors"
    r = cli("convert", d, "-o", out)
    _assert_clean_failure(r, "index.json", out)
    assert "00002-of-00003" in r.stderr and "missing" in r.stderr


def test_shape_no_format_can_take(cli, tmp_path):
    from harness.fixtures.synth import tensors
    t = dict(tensors("wan22-ti2v-5b-thin", seed=3))
    t["blocks.0.ffn.0.weight"] = t["blocks.0.ffn.0.weight"].reshape(512, 16, 16)   # not a Linear weight
    src = tmp_path / "weird_shape.safetensors"
    save_file(t, src)
    out = tmp_path / "o.safetensors"
    r = cli("convert", src, "-o", out, "--preset", "wan22-ti2v-5b", "--format", "nvfp4")
    _assert_clean_failure(r, "weird_shape.safetensors", out)
    assert "blocks.0.ffn.0.weight" in r.stderr and "2-D" in r.stderr


def test_non_finite_weights(cli, tmp_path):
    from harness.fixtures.synth import tensors
    t = dict(tensors("wan22-ti2v-5b-thin", seed=4))
    t["blocks.1.ffn.2.weight"][0, 0] = float("nan")
    src = tmp_path / "nan.safetensors"
    save_file(t, src)
    out = tmp_path / "o.safetensors"
    r = cli("convert", src, "-o", out, "--format", "fp8")
    _assert_clean_failure(r, "nan.safetensors", out)
    assert "blocks.1.ffn.2.weight" in r.stderr and "non-finite" in r.stderr


def test_pickle_is_never_loaded(cli, tmp_path):
    p = tmp_path / "model.ckpt"
    p.write_bytes(b"\x80\x04not really a pickle")
    out = tmp_path / "o.safetensors"
    r = cli("convert", p, "-o", out)
    _assert_clean_failure(r, "model.ckpt", out)
    assert "pickle" in r.stderr


def test_missing_source_and_unknown_preset(cli, tmp_path, thin_wan5b):
    out = tmp_path / "o.safetensors"
    _assert_clean_failure(cli("convert", tmp_path / "nope.safetensors", "-o", out), "nope.safetensors", out)
    r = cli("convert", thin_wan5b, "-o", out, "--preset", "no-such-preset")
    assert r.returncode == 2 and "unknown preset" in r.stderr and not out.exists()


def test_wrong_preset_for_model(cli, tmp_path, thin_wan5b):
    out = tmp_path / "o.safetensors"
    r = cli("convert", thin_wan5b, "-o", out, "--preset", "qwen-image")
    _assert_clean_failure(r, thin_wan5b.name, out)
    assert "no rule for tensor" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_conversion_leaves_nothing_under_final_name(tmp_path, sig):
    from harness.fixtures.synth import make_model
    from quant import arch
    arch.ALL["wan-interrupt-test"] = arch.ARCHS["wan22-ti2v-5b"].thin(dim=1024, ffn_dim=4096, num_layers=12)
    src = make_model("wan-interrupt-test", tmp_path / "big.safetensors", dtype=torch.bfloat16)
    out = tmp_path / "out.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # The converter writes this 380 MB model in about a second, and a starved test process can see its temp
    # file late (CI once saw it only after the rename). So the child is frozen (SIGSTOP) as soon as the temp
    # file shows; the signal is sent only while it is frozen mid-write (temp file there, no output yet), else
    # the attempt is void and repeated.
    for _attempt in range(3):
        out.unlink(missing_ok=True)
        p = subprocess.Popen([sys.executable, "-m", "harness.cli", "convert", str(src), "-o", str(out), "-f", "nvfp4",
                              "--preset", "smart"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             # a runner started in the background (CI) ignores SIGINT, and children inherit that:
                             # the convert would never see the Ctrl-C and finish its file
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None and not list(tmp_path.glob(".out.safetensors.*")):
            time.sleep(0.005)
        p.send_signal(signal.SIGSTOP)
        if list(tmp_path.glob(".out.safetensors.*")) and not out.exists():
            break
        p.send_signal(signal.SIGCONT)
        p.communicate(timeout=60)
    else:
        pytest.fail("never caught the conversion mid-write in 3 attempts")
    p.send_signal(sig)
    p.send_signal(signal.SIGCONT)
    _, err = p.communicate(timeout=60)
    assert not out.exists()
    if sig == signal.SIGINT:
        assert p.returncode == 130 and "interrupted" in err and "Traceback" not in err
        assert not list(tmp_path.glob(".out.safetensors.*"))


def test_output_write_failure_disk_full(tmp_path, thin_wan5b):
    """A write that fails part-way (here: a file-size limit standing in for a full disk) ends with one
    line naming the output, exit 2, and no temp file or output left behind."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "full.safetensors"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "convert", str(thin_wan5b), "-o", str(out)],
                       env=env, capture_output=True, text=True, timeout=120, preexec_fn=limit)
    _assert_clean_failure(r, "full.safetensors", out)
    assert "writing the output failed" in r.stderr


def test_unwritable_output_location(cli, tmp_path, thin_wan5b):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    out = blocker / "o.safetensors"
    r = cli("convert", thin_wan5b, "-o", out)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "o.safetensors" in r.stderr
