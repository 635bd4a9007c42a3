"""GPU benchmarks of the formats ComfyUI 0.33 ships beside fp8/nvfp4 (issue 24), ONE run on the GPU box:
`python -m pytest -m "bench and gpu" benchmarks/test_bench_new_formats_gpu.py --benchmark-json OUT.json`
(QG_BENCH_OUT: where the summary JSON goes).

* HBM copy rate (bytes read + written): the yardstick / I/O floor of a memory-bound quantizer;
* each new format at real WAN sizes (bf16): quantgate's path (the format module on CUDA tensors), comfy-kitchen's
  eager reference on the same device, and comfy-kitchen's CUDA backend; GB/s = (bytes read + written) / device
  median (triton.testing.do_bench); and whether each writes the bytes of kitchen's eager reference on that device;
* fp8 per-call overhead: ``get_backend("cuda").quantize_fp8`` (default: the deferred finiteness check) and with
  ``check_finite="sync"`` vs the raw Triton kernel (``quantize_fp8_async``), at every Linear shape of the target
  models, interleaved rounds.
"""
import json
import math
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.bench, pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
SHAPES = [(14336, 5120), (5120, 5120)]
NEW_FORMAT_SHAPES = SHAPES if os.environ.get("QG_NEW_SHAPES") == "all" else SHAPES[:1]
NEW = ("int8", "int8-convrot", "mxfp8", "w4a4-convrot", "w4a8-int8")
RESULTS: dict = {"device": None, "rows": {}}


def _bench_ms(fn) -> float:
    import triton.testing
    return float(triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median"))


def _record(benchmark, fn, key, nbytes, **info):
    ms = _bench_ms(fn)
    gbs = nbytes / 1e9 / (ms / 1e3)
    benchmark.pedantic(lambda: (fn(), torch.cuda.synchronize()), rounds=3, warmup_rounds=1)
    info.update(device_median_ms=round(ms, 4), bytes_moved=nbytes, gb_per_s=round(gbs, 1))
    benchmark.extra_info.update(info)
    RESULTS["rows"][key] = info
    _write_results()                        # after every row: a run cut short still leaves what it measured
    print(f"\n{key}: {ms * 1e3:.1f} us, {gbs:,.0f} GB/s")
    return gbs


def _write_results():
    out = Path(os.environ.get("QG_BENCH_OUT", ROOT / "benchmarks" / "results" / "gpu-new-formats.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(RESULTS, indent=1) + "\n")


@pytest.fixture(scope="module", autouse=True)
def _dump():
    RESULTS["device"] = torch.cuda.get_device_name()
    yield
    _write_results()


def test_bench_hbm_copy(benchmark):
    n = 2 << 30
    a = torch.randint(0, 255, (n,), dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    _record(benchmark, lambda: b.copy_(a), "hbm_copy", 2 * n, what="device-to-device copy of 2 GiB (read + write)")


@pytest.fixture(scope="module")
def weights():
    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for shape in SHAPES:
        x = torch.randn(shape, device="cuda", generator=g) * 0.02
        x[:, :17] *= 20
        out[shape] = x.to(torch.bfloat16)
    return out


def _kitchen(fmt, x, conf, backend):
    import comfy_kitchen as ck
    from comfy_kitchen.tensor import quantize_convrot_w4a4_weight, quantize_w4a8_int8_weight
    from comfy_kitchen.registry import registry

    def run():
        with ck.use_backend(backend):
            if fmt == "int8":
                impl = registry.get_implementation("quantize_int8_rowwise", kwargs={"x": x, "stochastic_rounding": 0})
                q, s = impl(x, stochastic_rounding=0)
                return {"weight": q, "weight_scale": s}
            if fmt == "int8-convrot":
                g = conf["convrot_groupsize"]
                impl = registry.get_implementation("quantize_int8_convrot_weight", kwargs={
                    "weight": x, "group_size": g, "stochastic_rounding": 0})
                q, s = impl(x, g, stochastic_rounding=0)
                return {"weight": q, "weight_scale": s}
            if fmt == "mxfp8":
                q, s = ck.quantize_mxfp8(x, pad_32x=x.shape[0] % 32 != 0 or x.shape[1] % 32 != 0)
                return {"weight": q, "weight_scale": s.view(torch.uint8)}
            if fmt == "w4a4-convrot":
                q, s = quantize_convrot_w4a4_weight(x, conf["convrot_groupsize"])
                return {"weight": q, "weight_scale": s}
            q, sr, sc, _c, cb = quantize_w4a8_int8_weight(x, 16, conf["convrot_groupsize"])
            return {"weight": q, "weight_s_rel": sr, "weight_s_channel": sc, "weight_codebook": cb}
    return run


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(
        a[k].shape == b[k].shape and torch.equal(a[k].contiguous().view(torch.uint8).reshape(-1),
                                                 b[k].contiguous().view(torch.uint8).reshape(-1)) for k in a)


def _nbytes(out: dict, x) -> int:
    return x.numel() * x.element_size() + sum(v.numel() * v.element_size() for v in out.values())


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("fmt", NEW)
@pytest.mark.parametrize("impl", ["quantgate", "quantgate-async", "quantgate-fused", "kitchen-eager", "kitchen-cuda"])
def test_bench_new_format(benchmark, weights, fmt, impl, shape):
    """quantgate: the format's quantize() on CUDA (the kernel seam, one host sync for the finiteness check);
    quantgate-async: its quantize_async (the pipelined converter's no-sync kernels), where it has one;
    quantgate-fused: the ConvRot formats' async path with the rotation inside the kernel (tl.dot, CFG rot_fused=1,
    off by default): recorded, its bit-exactness with kitchen's eager reference is the question asked."""
    from quant.kernels import triton_quant as tq
    if impl == "quantgate-fused":
        if fmt not in ("int8-convrot", "w4a4-convrot"):
            pytest.skip("no rotation to fuse")
        tq.CFG["rot_fused"] = 1
    try:
        _bench_new_format(benchmark, weights, fmt, impl, shape)
    finally:
        tq.CFG["rot_fused"] = 0


def _bench_new_format(benchmark, weights, fmt, impl, shape):
    if shape not in NEW_FORMAT_SHAPES:
        pytest.skip("the new formats are measured at 14336x5120 (QG_NEW_SHAPES=all for every shape)")
    from quant import formats
    f = formats.get(fmt)
    x = weights[shape]
    conf = f.layer_config(False, None, shape)
    ref = _kitchen(fmt, x, conf, "eager")()
    if impl == "quantgate":
        fn = lambda: f.quantize(x)          # noqa: E731
    elif impl in ("quantgate-async", "quantgate-fused"):
        from quant.kernels import get_backend
        be = get_backend("cuda")
        try:
            none = f.quantize_async(be, x) is None
        except Exception as e:               # the fused kernel does not launch on every card: recorded
            RESULTS["rows"][f"{fmt} {impl} {shape[0]}x{shape[1]}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            pytest.skip(f"{impl} cannot run {fmt}: {e}")
        if none:
            pytest.skip(f"{fmt} has no async path (quantize() serves the pipeline)")
        fn = lambda: f.quantize_async(be, x)[0]          # noqa: E731
    else:
        fn = _kitchen(fmt, x, conf, impl.split("-")[1])
    try:
        out = fn()
    except Exception as e:                   # a backend without the op: recorded, not a failure
        RESULTS["rows"][f"{fmt} {impl} {shape[0]}x{shape[1]}"] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
        pytest.skip(f"{impl} cannot run {fmt}: {e}")
    exact = _same(out, ref)
    _record(benchmark, fn, f"{fmt} {impl} {shape[0]}x{shape[1]}", _nbytes(out, x),
            bit_exact_with_kitchen_eager_on_cuda=exact)
    if impl in ("quantgate", "quantgate-async"):
        assert exact, f"{fmt}: quantgate's CUDA bytes differ from kitchen's eager reference on the same device"


ROW_TILINGS = {     # QUANTGATE_TRITON_CFG keys of the per-row kernels (int8, int8-convrot, w4a4-convrot); A = defaults
    "A": {},
    "B": {"onepass": 8192, "onepass_bm": 1},
    "C": {"onepass": 8192, "onepass_bm": 2, "warps": 8},
    "E": {"bm": 8, "bk": 2048, "warps": 8},
}


@pytest.mark.parametrize("tiling", list(ROW_TILINGS))
@pytest.mark.parametrize("fmt", ["int8", "int8-convrot", "w4a4-convrot"])
def test_bench_row_kernel_tiling(benchmark, weights, fmt, tiling):
    """The per-row kernels' launch shapes (one pass with the whole row in registers, or two passes over BK-column
    steps): the same bytes for every one (checked against kitchen's eager reference on the device), GB/s per tiling."""
    from quant import formats
    from quant.kernels import get_backend
    from quant.kernels import triton_quant as tq
    shape = NEW_FORMAT_SHAPES[0]
    x = weights[shape]
    f = formats.get(fmt)
    ref = _kitchen(fmt, x, f.layer_config(False, None, shape), "eager")()
    key = "i8" if fmt != "w4a4-convrot" else "w4"
    saved = dict(tq.CFG)
    try:
        for k, v in ROW_TILINGS[tiling].items():
            tq.CFG[f"{key}_{k}"] = v
        be = get_backend("cuda")
        fn = lambda: f.quantize_async(be, x)[0]          # noqa: E731
        out = fn()
        exact = _same(out, ref)
        _record(benchmark, fn, f"{fmt} tiling-{tiling} {shape[0]}x{shape[1]}", _nbytes(out, x),
                tiling={f"{key}_{k}": v for k, v in ROW_TILINGS[tiling].items()}, bit_exact_with_kitchen_eager_on_cuda=exact)
    finally:
        tq.CFG.clear()
        tq.CFG.update(saved)
    assert exact


W4A8_TILINGS = {"A": {}, "L": {"search": 2}, "LF": {"search": 2, "fastdiv": 1}, "F1": {"fastdiv": 1},
                "G0": {"gsearch": 0}, "S0": {"search": 0, "gsearch": 0}, "B": {"bm": 8, "bk": 128},
                "CAT": {"rotate_into_one": 0}}
# A = the defaults (triton_w4a8.CFG; rotate_into_one: quant.formats.w4a8_int8.ROTATE_INTO_ONE)


@pytest.mark.parametrize("tiling", list(W4A8_TILINGS))
def test_bench_w4a8_tiling(benchmark, weights, tiling):
    """W4A8's Triton kernel (quant.kernels.triton_w4a8) per launch shape, the whole quantize() and the kernel alone
    on the already rotated weight (the rest is torch's rotation, the codebook decision and the finiteness check):
    the same bytes for every tiling (checked against kitchen's eager reference on the device)."""
    from quant import formats
    from quant.formats import convrot
    from quant.formats.w4a8_int8 import FIXED_CODEBOOK
    from quant.kernels import triton_w4a8 as tw
    RESULTS["w4a8_probes"] = {"sum_order": tw.sum_order("cuda"), "e4m3_overflow": tw.e4m3_overflow("cuda")}
    shape = NEW_FORMAT_SHAPES[0]
    x = weights[shape]
    f = formats.get("w4a8-int8")
    ref = _kitchen("w4a8-int8", x, f.layer_config(False, None, shape), "eager")()
    from quant.formats import w4a8_int8
    saved, saved_into, saved_on = dict(tw.CFG), w4a8_int8.ROTATE_INTO_ONE, w4a8_int8.TRITON
    w4a8_int8.TRITON = True                 # the opt-in Triton path (the default quantize() is the torch ops)
    try:
        cfg = dict(W4A8_TILINGS[tiling])
        w4a8_int8.ROTATE_INTO_ONE = bool(cfg.pop("rotate_into_one", saved_into))
        tw.CFG.update(cfg)
        fn = lambda: f.quantize(x)          # noqa: E731
        out = fn()
        exact = _same(out, ref)
        nb = _nbytes(out, x)
        _record(benchmark, fn, f"w4a8-int8 tiling-{tiling} {shape[0]}x{shape[1]}", nb, tiling=W4A8_TILINGS[tiling],
                bit_exact_with_kitchen_eager_on_cuda=exact)
        r = convrot.rotate(x, convrot.group_for(shape[1]))
        cb = torch.tensor(FIXED_CODEBOOK, device="cuda")
        kern = lambda: tw.quantize_w4a8_rotated_async(r, cb, tw.sum_order("cuda"), tw.e4m3_overflow("cuda"),  # noqa: E731
                                                      sorted_levels=True)
        ms = _bench_ms(kern)
        RESULTS["rows"][f"w4a8-int8 kernel-only tiling-{tiling} {shape[0]}x{shape[1]}"] = {
            "device_median_ms": round(ms, 4), "bytes_moved": nb, "gb_per_s": round(nb / 1e9 / (ms / 1e3), 1),
            "what": "the Triton kernel on the rotated weight (bytes counted as for the whole quantize)"}
        rot_ms = _bench_ms(lambda: convrot.rotate(x, convrot.group_for(shape[1])))
        RESULTS["rows"][f"w4a8-int8 rotation-only {shape[0]}x{shape[1]}"] = {"device_median_ms": round(rot_ms, 4)}
        _write_results()
        print(f"\nw4a8 {tiling}: kernel only {ms * 1e3:.1f} us, rotation only {rot_ms * 1e3:.1f} us, "
              f"probes {RESULTS['w4a8_probes']}")
    finally:
        tw.CFG.clear()
        tw.CFG.update(saved)
        w4a8_int8.ROTATE_INTO_ONE = saved_into
        w4a8_int8.TRITON = saved_on
    assert exact


def test_bench_new_formats_summary(benchmark):
    """Per format and shape measured above: quantgate (sync op and no-sync path) against comfy-kitchen's CUDA
    backend and the HBM copy rate of the same run, on the card named in RESULTS["device"]."""
    benchmark.pedantic(lambda: None, rounds=1)
    rows, hbm = RESULTS["rows"], RESULTS["rows"].get("hbm_copy", {}).get("gb_per_s")
    out = {}
    for fmt in NEW:
        for shape in NEW_FORMAT_SHAPES:
            key = f"{shape[0]}x{shape[1]}"
            got = {impl: rows.get(f"{fmt} {impl} {key}", {})
                   for impl in ("quantgate", "quantgate-async", "quantgate-fused", "kitchen-cuda")}
            ck = got["kitchen-cuda"].get("gb_per_s")
            r = {"card": RESULTS["device"], "hbm_copy_gb_s": hbm, "kitchen_cuda_gb_s": ck,
                 "kitchen_cuda_bit_exact_with_its_eager": got["kitchen-cuda"].get("bit_exact_with_kitchen_eager_on_cuda")}
            for impl in ("quantgate", "quantgate-async", "quantgate-fused"):
                g = got[impl].get("gb_per_s")
                if g:
                    r[f"{impl}_gb_s"] = g
                    r[f"{impl}_share_of_hbm"] = round(g / hbm, 3) if hbm else None
                    r[f"{impl}_vs_kitchen_cuda"] = round(g / ck, 3) if ck else None
                    r[f"{impl}_bit_exact"] = got[impl].get("bit_exact_with_kitchen_eager_on_cuda")
            tilings = {k.split()[1]: v.get("gb_per_s") for k, v in rows.items()
                       if k.startswith(f"{fmt} tiling-") and k.endswith(key) and v.get("bit_exact_with_kitchen_eager_on_cuda")}
            if fmt == "w4a8-int8":
                r["probes"] = RESULTS.get("w4a8_probes")
            if tilings:
                best = max(tilings, key=tilings.get)
                r.update(best_tiling=best, best_tiling_gb_s=tilings[best],
                         best_tiling_vs_kitchen_cuda=round(tilings[best] / ck, 3) if ck else None)
            out[f"{fmt} {key}"] = r
    RESULTS["summary"] = out
    benchmark.extra_info.update(out)
    print("\n" + json.dumps(out, indent=1))


# the Linear shapes of the target models (WAN 2.2 TI2V 5B: 3072/14336; A14B: 5120/13824; Qwen-Image: 3072/12288)
# and the issue's 14336x5120
OP_SHAPES = [(5120, 5120), (14336, 5120), (13824, 5120), (5120, 13824), (3072, 3072), (14336, 3072), (3072, 14336),
             (12288, 3072), (3072, 12288)]
OP_SHAPES = list(dict.fromkeys(OP_SHAPES))


def test_bench_fp8_backend_op_overhead(benchmark):
    """``get_backend("cuda").quantize_fp8`` (default: the deferred finiteness check) and with
    ``check_finite="sync"`` against the raw Triton kernel (``quantize_fp8_async``), per real shape, interleaved:
    5 rounds of (raw, op, sync), each a triton.testing.do_bench median; the figure is the median of the rounds,
    the spread (min-max of the rounds) beside it. Target: the op within 10 % of the raw kernel at every shape."""
    from quant.kernels import get_backend
    from quant.kernels import triton_quant as tq
    be = get_backend("cuda")
    be.flush()
    g = torch.Generator(device="cuda").manual_seed(0)
    out = {}
    for shape in OP_SHAPES:
        x = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=g)
        nb = x.numel() * 3
        fns = {"raw": lambda: tq.quantize_fp8_async(x), "op": lambda: be.quantize_fp8(x),
               "sync": lambda: be.quantize_fp8(x, check_finite="sync")}
        ms = {k: [] for k in fns}
        for _ in range(5):
            for k, fn in fns.items():
                ms[k].append(_bench_ms(fn))
        be.flush()
        med = {k: sorted(v)[2] for k, v in ms.items()}
        key = f"{shape[0]}x{shape[1]}"
        out[key] = {k: {"median_us": round(med[k] * 1e3, 2), "gb_per_s": round(nb / 1e9 / (med[k] / 1e3), 1),
                        "rounds_us": [round(v * 1e3, 2) for v in ms[k]]} for k in fns}
        out[key]["op_vs_raw"] = round(med["raw"] / med["op"], 3)
        out[key]["sync_vs_raw"] = round(med["raw"] / med["sync"], 3)
        out[key]["op_within_10pct"] = med["op"] <= 1.10 * med["raw"]
        print(f"\nfp8 op {key}: raw {med['raw'] * 1e3:.1f} us, op {med['op'] * 1e3:.1f} us "
              f"({out[key]['op_vs_raw']:.3f}x of raw speed), sync {med['sync'] * 1e3:.1f} us ({out[key]['sync_vs_raw']:.3f}x)")
        del x
    RESULTS["fp8_backend_op"] = out
    _write_results()
    benchmark.extra_info.update(out)
    benchmark.pedantic(lambda: None, rounds=1, warmup_rounds=0)
    assert all(v["raw"]["median_us"] > 0 for v in out.values())


def _cli_convert(src, out, fmt, serial_start=False, timeline=None, preload=False):
    """The whole CLI (`python -m harness.cli convert --device cuda`), a fresh process: (wall s, summary).
    ``serial_start``: QUANTGATE_WARMUP=0, the start-up before quant.startup (imports, CUDA and kernels, then the
    first read); ``timeline``: where the CLI writes its start-up timeline (QUANTGATE_TIMELINE)."""
    import subprocess
    import sys
    import time
    cmd = [sys.executable, "-m", "harness.cli", "convert", str(src), "-o", str(out), "-f", fmt,
           "--device", "cuda", "--force", "-q", "--json"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH")))),
               QUANTGATE_WARMUP="0" if serial_start else "1", QUANTGATE_PRELOAD_LIBS="1" if preload else "0")
    if timeline is not None:
        env["QUANTGATE_TIMELINE"] = str(timeline)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    assert p.returncode == 0, p.stderr[-3000:]
    return wall, json.loads(p.stdout[p.stdout.index("{"):])


# "fmt@serial": the same format with the serial start-up (QUANTGATE_WARMUP=0): the before of the same run;
# "fmt@preload": overlapped start-up reading the recorded library pages first (QUANTGATE_PRELOAD_LIBS=1)
E2E_FORMATS = tuple(os.environ.get("QG_E2E_FORMATS", ",".join(("fp8@serial", "fp8", "nvfp4", *NEW))).split(","))


def test_bench_e2e_wan5b_whole_cli_every_format(benchmark, tmp_path_factory):
    """Real-size WAN 2.2 TI2V 5B (FP32 shards, ~20 GB) -> each format with the whole CLI, cold (page cache
    dropped before each), against the I/O floor of the same run (cold read of the shards + fsync'd write of
    that format's output size). fp8 is the baseline of the same run (QG_E2E_FORMATS: which formats)."""
    from test_bench_gpu import _drop_caches, _make_fp32_shards, _read_s, _write_s
    base = tmp_path_factory.mktemp("e2e_new")
    files, _largest = _make_fp32_shards(base / "wan2.2_ti2v_5B")
    src = base / "wan2.2_ti2v_5B" / "diffusion_pytorch_model.safetensors.index.json"
    from quant import startup
    t0 = __import__("time").perf_counter()
    for fmt in dict.fromkeys(f.split("@")[0] for f in E2E_FORMATS):
        # warm-up: Triton's disk cache (once per machine) for this source's shapes, here in one process (the
        # CLI's own warm-up thread, run synchronously), instead of one tiny CLI conversion per format
        w = startup.Warmup(src, "cuda", fmt)
        w._open()
        w._gpu_main()
        assert not w.errors, w.errors
    RESULTS["e2e_kernel_warmup_s"] = round(__import__("time").perf_counter() - t0, 1)
    if any(r.endswith("@preload") for r in E2E_FORMATS):
        RESULTS["e2e_lib_record_bytes"] = startup.record_libs()   # this process maps the libraries a convert does
    rows = {}
    src_bytes = sum(f.stat().st_size for f in files)
    _drop_caches()
    read_cold = _read_s(files)                      # the cold-read half of the floor, once
    for run in E2E_FORMATS:
        fmt, _, how = run.partition("@")
        out = base / f"out_{fmt}.safetensors"
        tl = base / f"timeline_{fmt}_{how or 'overlapped'}.json"
        dropped = _drop_caches()
        wall, summ = _cli_convert(src, out, fmt, serial_start=how == "serial", timeline=tl, preload=how == "preload")
        out_bytes = out.stat().st_size
        out.unlink()
        write_s = _write_s(base / "write_probe.bin", out_bytes)
        floor = read_cold + write_s
        rows[run] = dict(start_up={"serial": "serial (QUANTGATE_WARMUP=0)", "preload": "overlapped, libraries first "
                                   "(QUANTGATE_PRELOAD_LIBS=1)"}.get(how, "overlapped (quant.startup)"),
                         timeline=json.loads(tl.read_text()) if tl.exists() else None,
                         page_cache_dropped=dropped, source_bytes=src_bytes, output_bytes=out_bytes,
                         read_cold_s=round(read_cold, 2), write_fsync_s=round(write_s, 2), floor_cold_s=round(floor, 2),
                         cli_wall_s=round(wall, 2), convert_s=round(summ["seconds"], 2),
                         ratio_cli_wall=round(wall / floor, 3), ratio_convert=round(summ["seconds"] / floor, 3),
                         layers=summ["layers"], target_cli_wall=1.25)
        print(f"\n{run}: " + json.dumps(rows[run]))
        RESULTS["e2e_whole_cli"] = rows
        _write_results()                            # a run cut short keeps the rows measured so far
    benchmark.extra_info.update(rows)
    benchmark.pedantic(lambda: None, rounds=1, warmup_rounds=0)
    assert all(r["output_bytes"] > 0 for r in rows.values())
