"""Converter benchmarks (pytest-benchmark; run with `./qg bench` or `tox -e bench`; JSON saved).

* quantize kernels on CPU in MB/s of bf16 input (fp8, nvfp4)
* end-to-end `quantgate convert` CLI in MB/s of input, and the peer tool `convert_to_quant --simple`
  on the same input in the same run (ratio; target >= 3x faster)
* peak RSS converting a >= 2 GB model (target <= 2 x largest tensor + 1 GB)
"""
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from quant import arch
from quant.kernels import fp8, nvfp4

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.bench
ENV = dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def weight():
    return (torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
@pytest.mark.parametrize("threads", [0, 1])
def test_bench_quantize_kernel_cpu(benchmark, weight, fmt, threads):
    """MB/s of bf16 input; threads 0 = torch's default. (The pre-issue-11 row kernel this was once compared
    with is gone; its numbers stay in benchmarks/results, and the bytes are held by
    tests/quant/test_convert_bytes.py.)"""
    fn = {"fp8": fp8.quantize, "nvfp4": nvfp4.quantize}[fmt]
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        benchmark.pedantic(fn, args=(weight,), rounds=5, warmup_rounds=1)
    finally:
        torch.set_num_threads(before)
    mb = weight.numel() * 2 / 1e6
    benchmark.extra_info.update(input_mb=mb, mb_per_s_median=mb / benchmark.stats.stats.median,
                                threads=threads or before)


def _wait_rss(cmd, env=ENV):
    """Run cmd; return (seconds, peak RSS in MB of the child, rc, stderr)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    return dt, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), err


@pytest.fixture(scope="module")
def mid_model(tmp_path_factory):
    """~270 MB bf16 WAN-layout model (dim 1024, ffn 4096, 8 blocks)."""
    from harness.fixtures.synth import make_model
    arch.ALL["wan-bench-mid"] = arch.ARCHS["wan22-ti2v-5b"].thin(dim=1024, ffn_dim=4096, num_layers=8)
    return make_model("wan-bench-mid", tmp_path_factory.mktemp("mid") / "wan_mid_bf16.safetensors")


def test_bench_convert_vs_convert_to_quant(benchmark, mid_model, tmp_path):
    size_mb = mid_model.stat().st_size / 1e6
    ours_out = tmp_path / "ours.safetensors"
    ours = [sys.executable, "-m", "harness.cli", "convert", str(mid_model), "-o", str(ours_out), "-f", "fp8",
            "--preset", "wan22-ti2v-5b", "--force", "-q"]

    def run_ours():
        dt, rss, rc, err = _wait_rss(ours)
        assert rc == 0, err
        return dt

    benchmark.pedantic(run_ours, rounds=3, warmup_rounds=0)
    ours_median = benchmark.stats.stats.median
    peer_out = tmp_path / "peer.safetensors"
    peer = [str(Path(sys.executable).parent / "convert_to_quant"), "-i", str(mid_model), "-o", str(peer_out),
            "--simple", "--comfy_quant", "--full_precision_matrix_mult", "--wan", "--device", "cpu",
            "--verbose", "MINIMAL"]
    peer_times = []
    for _ in range(1):
        dt, rss, rc, err = _wait_rss(peer)
        assert rc == 0, err[-2000:]
        peer_times.append(dt)
    peer_median = statistics.median(peer_times)
    benchmark.extra_info.update(
        input_mb=round(size_mb, 1), ours_median_s=round(ours_median, 3),
        ours_mb_per_s=round(size_mb / ours_median, 1), peer="convert_to_quant 1.3.4 --simple --comfy_quant",
        peer_median_s=round(peer_median, 3), peer_mb_per_s=round(size_mb / peer_median, 1),
        speedup_vs_peer=round(peer_median / ours_median, 2), target_speedup=3.0)
    print(f"\nconvert {size_mb:.0f} MB: quantgate {ours_median:.2f} s vs convert_to_quant {peer_median:.2f} s "
          f"-> {peer_median / ours_median:.1f}x")


def test_bench_peak_rss_2gb_model(benchmark, tmp_path_factory):
    from harness.fixtures.synth import make_model
    arch.ALL["wan-bench-2g"] = arch.ARCHS["wan22-ti2v-5b"].thin(num_layers=6)
    src = make_model("wan-bench-2g", tmp_path_factory.mktemp("big") / "wan_2g_bf16.safetensors")
    largest = max(torch.Size(s).numel() for _, s in arch.get("wan-bench-2g").tensors()) * 2
    total = src.stat().st_size
    out = src.parent / "out.safetensors"
    cmd = [sys.executable, "-m", "harness.cli", "convert", str(src), "-o", str(out), "-f", "nvfp4", "--force", "-q"]
    res = {}

    def run():
        dt, rss, rc, err = _wait_rss(cmd)
        assert rc == 0, err
        res.update(dt=dt, rss=rss)

    benchmark.pedantic(run, rounds=1, warmup_rounds=0)
    target = 2 * largest / 2**20 + 1024
    benchmark.extra_info.update(model_mb=round(total / 1e6), largest_tensor_mb=round(largest / 2**20, 1),
                                peak_rss_mib=round(res["rss"]), target_mib=round(target),
                                mb_per_s=round(total / 1e6 / res["dt"], 1))
    print(f"\npeak RSS {res['rss']:.0f} MiB converting {total / 1e9:.2f} GB (largest tensor "
          f"{largest / 2**20:.0f} MiB; target <= {target:.0f} MiB)")
    out.unlink(missing_ok=True)
    src.unlink(missing_ok=True)
