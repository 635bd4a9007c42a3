"""Learned-rounding workers die with their parent, even under SIGKILL, and their shard directory is removed
by the next write to the same output (issue 20). Before: after `kill -9` of `convert --rounding learned
--gpus 2` both workers and the resource tracker kept running at full CPU (they would hold GPUs), and the
shard directory `.<out>.learned-*` survived the next write."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from harness.fixtures.synthetic_activations import activations
from quant.activations.samples import save_samples
from quant.convert import make_plan
from quant.sources import open_source

ROOT = Path(__file__).resolve().parents[3]


def _env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("QUANTGATE_DEBUG", None)
    return e


@pytest.mark.slow
def test_sigkill_of_convert_takes_its_workers_and_the_next_write_removes_their_shards(thin_wan5b, tmp_path):
    out = tmp_path / "o.safetensors"
    samples = tmp_path / "samples" / "acts.safetensors"        # learned rounding needs recorded rows (issue 19)
    samples.parent.mkdir()
    with open_source(thin_wan5b) as src:
        plan = make_plan(src, None, "fp8")
    save_samples({d.layer: activations(d.shape[1], seed=i)(64) for i, d in enumerate(plan.quantized())}, samples)
    p = subprocess.Popen([sys.executable, "-m", "harness.cli", "convert", str(thin_wan5b), "-o", str(out), "-f", "fp8",
                          "--rounding", "learned", "--act-samples", str(samples), "--gpus", "2", "--device", "cpu",
                          "--iters", "1000000"],
                         env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    kids: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert p.poll() is None, p.stderr.read().decode()[-2000:]
            try:
                kids = psutil.Process(p.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                kids = []
            shards = [d for d in tmp_path.iterdir() if d.is_dir() and d.name.startswith(".o.safetensors.")]
            workers = [k for k in kids if any("_worker" in a or "spawn_main" in a for a in _cmd(k))]
            if len(workers) >= 2 and shards:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the workers never started")
        time.sleep(1.0)                              # let them get to work
        os.kill(p.pid, signal.SIGKILL)               # the parent only, as `kill -9 PID` does
        p.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and [k for k in kids if _alive(k)]:
            time.sleep(0.2)
        left = [(k.pid, _cmd(k)[-2:]) for k in kids if _alive(k)]
        assert not left, f"children of the killed convert still run: {left}"
    finally:
        for k in kids:
            if _alive(k):
                k.kill()
        if p.poll() is None:
            p.kill()
    assert [d for d in tmp_path.iterdir() if d.name.startswith(".o.safetensors.")], "no shard directory to clean up"
    r = subprocess.run([sys.executable, "-m", "harness.cli", "convert", str(thin_wan5b), "-o", str(out), "-f", "fp8"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "removed a stale partial directory" in r.stderr, r.stderr
    assert not [d for d in tmp_path.iterdir() if d.name.startswith(".o.safetensors.")]


def _cmd(k: psutil.Process) -> list[str]:
    try:
        return k.cmdline()
    except psutil.Error:
        return []


def _alive(k: psutil.Process) -> bool:
    try:
        return k.is_running() and k.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
