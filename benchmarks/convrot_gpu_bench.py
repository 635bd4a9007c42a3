"""int8-convrot on CUDA (issue 24 item 6): bytes of every path vs comfy-kitchen 0.2.40's EAGER reference on this card,
which cuBLAS kernel each rotation M gets, and timings (CUDA events, median of REPS) of ours (whole-weight rotation =
the old path, row-chunked rotation at several chunk sizes), per stage (rotation alone, quant alone) and kitchen's
CUDA backend. Writes OUT/results.json and prints a summary. Every step is guarded: one failure is recorded, the
rest runs. Usage: python3 benchmarks/convrot_gpu_bench.py OUTDIR [deadline_s]"""
import json
import os
import statistics
import sys
import time
import traceback

import torch

T0 = time.time()
OUT = sys.argv[1]
DEADLINE = float(sys.argv[2]) if len(sys.argv) > 2 else 80.0
DRY = os.environ.get("CONVROT_DRY") == "1"      # CPU smoke run of this script (TRITON_INTERPRET=1, tiny shapes)
DEV = "cpu" if DRY else "cuda"
REPS = 3 if DRY else 25
SHAPES = [(96, 512), (64, 256), (48, 1024), (33, 512), (21, 1040)] if DRY else \
    [(14336, 5120), (5120, 5120), (3072, 12288), (3001, 4352), (1001, 1040)]
CHUNKS_KB = [16, 32] if DRY else [2048, 4096, 8192, 16384, 32768]
SMALL_KB = [4, 8] if DRY else [256, 1024]
PROF_KB = [4, 16] if DRY else [256, 1024, 4096, 16384]
RES = {"rows": {}, "bytes": {}, "rotation_bytes": {}, "cublas_kernels": {}, "errors": [], "cpu_call_us": {}}
os.makedirs(OUT, exist_ok=True)


def sync():
    if not DRY:
        torch.cuda.synchronize()


def left():
    return DEADLINE - (time.time() - T0)


def save():
    RES["elapsed_s"] = round(time.time() - T0, 1)
    from quant.outputs import write_text
    write_text(os.path.join(OUT, "results.json"), json.dumps(RES, indent=1) + "\n", what="benchmark record")


def guard(what, fn):
    try:
        return fn()
    except Exception as e:  # record and go on
        RES["errors"].append(f"{what}: {type(e).__name__}: {e}"[:600])
        print("ERROR", what, type(e).__name__, str(e)[:300], flush=True)
        traceback.print_exc(limit=3)
        return None


from quant.formats import convrot  # noqa: E402
from quant.kernels import triton_quant as tq  # noqa: E402
from comfy_kitchen.backends.eager import quantization as keager  # noqa: E402

kcuda = None if DRY else guard("import kitchen cuda", lambda: __import__("comfy_kitchen.backends.cuda", fromlist=["x"]))
import triton  # noqa: E402

RES["card"] = "cpu (dry run)" if DRY else torch.cuda.get_device_name()
RES["versions"] = {"torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda}
RES["matmul_flags"] = {"allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                       "allow_bf16_reduced_precision_reduction":
                           torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction}
RES["cfg"] = dict(tq.CFG)
RES["l2_kb"] = 0 if DRY else getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 0) // 1024
AUTO = {f"ours-chunkL2/{d}": {"rot_chunk_kb": -1, "rot_chunk_l2_div": d} for d in (2, 4, 8)}
print("L2 KB", RES["l2_kb"], flush=True)
print(RES["card"], RES["versions"], RES["matmul_flags"], flush=True)

FLUSH = torch.empty(1 << 10 if DRY else 64 << 20, dtype=torch.int32, device=DEV)     # 256 MB: evicts L2 (50 MB) between repeats


def data(shape, kind, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    x = torch.randn(shape, device=DEV, generator=g)
    if kind == "wide":       # magnitudes over ~2^-20..2^6 in one group: the summation order shows
        x = x * torch.exp2(torch.randn(shape, device=DEV, generator=g) * 4).clamp(max=64.0)
        x[:, ::7] = 0
    else:                    # the formats bench's: N(0, 0.02) with 17 outlier columns x20
        x = x * 0.02
        x[:, :17] *= 20
    return x.to(torch.bfloat16)


def lab(kb):
    return f"{kb // 1024}MB" if kb >= 1024 else f"{kb}KB"


def with_cfg(cfg, fn):
    old = {k: tq.CFG[k] for k in cfg}
    tq.CFG.update(cfg)
    try:
        return fn()
    finally:
        tq.CFG.update(old)


def with_chunks(kb, fn):
    return with_cfg({"rot_chunk_kb": kb}, fn)


def ours(kb):
    return lambda x, g: with_chunks(kb, lambda: tq.quantize_int8_convrot_async(x, g))[:2]


# the rotation inside the Triton kernel (tl.dot on Hopper's MMA): opt-in; are its bytes cuBLAS's?
FUSED = {"ours-fused-bm64w8s2": {"rot_fused": 1, "rot_bm": 64, "rot_warps": 8, "rot_stages": 2},
         "ours-fused-bm64w16s2": {"rot_fused": 1, "rot_bm": 64, "rot_warps": 16, "rot_stages": 2},
         "ours-fused-bm16w4s2": {"rot_fused": 1, "rot_bm": 16, "rot_warps": 4, "rot_stages": 2}}


def fused(cfg):
    return lambda x, g: with_cfg(cfg, lambda: tq.quantize_int8_convrot_async(x, g))[:2]


def same(a, b):
    return all(u.shape == v.shape and u.dtype == v.dtype and torch.equal(u.contiguous().view(torch.uint8),
                                                                         v.contiguous().view(torch.uint8))
               for u, v in zip(a, b))


def diff(a, b):
    dq = (a[0].int() - b[0].int()).abs()
    return {"codes_differ": int((dq != 0).sum()), "max_code_diff": int(dq.max()),
            "scales_differ": int((a[1] != b[1]).sum())}


# ---- (a) bytes ---------------------------------------------------------------------------------------------
for shape in SHAPES:
    g = convrot.group_for(shape[1])
    for kind in ("normal", "wide"):
        x = data(shape, kind)
        key = f"{shape[0]}x{shape[1]} g{g} {kind}"
        ref = keager.quantize_int8_convrot_weight(x, g)
        row = {}
        for name, fn in [("ours-whole(old)", ours(0))] + [(f"ours-chunk{lab(kb)}", ours(kb)) for kb in CHUNKS_KB] + \
                [(f"ours-chunk{lab(kb)}", ours(kb)) for kb in SMALL_KB] + [(nm, fused(c)) for nm, c in AUTO.items()] + \
                [(nm, fused(c)) for nm, c in FUSED.items() if left() > 50]:
            r = guard(f"bytes {key} {name}", lambda: fn(x, g))
            if r is not None:
                sync()
                row[name] = True if same(r, ref) else diff(r, ref)
        if kcuda is not None:
            r = guard(f"bytes {key} kitchen-cuda", lambda: kcuda.quantize_int8_convrot_weight(x, g))
            if r is not None:
                row["kitchen-cuda"] = True if same(r, ref) else diff(r, ref)
        # the rotation itself: chunks vs kitchen's whole-weight _rotate_weight
        from comfy_kitchen.tensor.int8_utils import _build_hadamard, _rotate_weight
        whole = _rotate_weight(x, _build_hadamard(g, device=x.device, dtype=x.dtype), g)
        rrow = {}
        for kb in SMALL_KB + CHUNKS_KB:
            def rot_chunks(kb=kb):
                out = torch.empty_like(x)
                for a, b in with_chunks(kb, lambda: tq._rotation_chunks(*shape, 2)):
                    out[a:b] = tq.rotate_chunk(x[a:b], g)
                return out
            r = guard(f"rotation {key} {kb}KB", rot_chunks)
            if r is not None:
                rrow[lab(kb)] = int((r.view(torch.int16) != whole.view(torch.int16)).sum())
        RES["bytes"][key] = row
        RES["rotation_bytes"][key] = rrow
        print("bytes", key, row, "rotation elements differing:", rrow, flush=True)
        del x, ref, whole
    save()

# fp32 and fp16 weights (the chunked path at twice / the same bytes per element) at one shape
for dt in (torch.float32, torch.float16):
    if left() < 45:
        break
    shape = SHAPES[1]
    g = convrot.group_for(shape[1])
    x = data(shape, "wide").to(dt)
    key = f"{shape[0]}x{shape[1]} g{g} wide {str(dt)[6:]}"
    ref = keager.quantize_int8_convrot_weight(x, g)
    row = {}
    for name, fn in [("ours-whole(old)", ours(0))] + [(f"ours-chunk{lab(kb)}", ours(kb)) for kb in CHUNKS_KB[:3]]:
        r = guard(f"bytes {key} {name}", lambda: fn(x, g))
        if r is not None:
            row[name] = True if same(r, ref) else diff(r, ref)
    RES["bytes"][key] = row
    print("bytes", key, row, flush=True)
    del x, ref
save()


# ---- (b) timings ---------------------------------------------------------------------------------------------
class _Ev:           # CPU stand-in for torch.cuda.Event in the dry run
    def __init__(self, **kw):
        self.t = 0.0

    def record(self):
        self.t = time.perf_counter()

    def synchronize(self):
        pass

    def elapsed_time(self, other):
        return (other.t - self.t) * 1e3


Event = _Ev if DRY else torch.cuda.Event


def t_cold(fn, reps=REPS):
    """L2 flushed, device idle (synchronised) before each repeat: includes the CPU's launch cost."""
    ts = []
    for _ in range(reps):
        FLUSH.zero_()
        sync()
        s, e = Event(enable_timing=True), Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        ts.append(s.elapsed_time(e))
    return statistics.median(ts)


def t_queued(fn, reps=REPS):
    """L2 flushed before each repeat, no synchronisation (triton's do_bench): launch cost hidden behind the flush."""
    ev = []
    for _ in range(reps):
        FLUSH.zero_()
        s, e = Event(enable_timing=True), Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        ev.append((s, e))
    sync()
    return statistics.median(s.elapsed_time(e) for s, e in ev)


def cpu_us(fn, reps=REPS):
    ts = []
    for _ in range(reps):
        sync()
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e6)
    sync()
    return statistics.median(ts)


for shape in SHAPES[:4] + SHAPES[4:]:
    if left() < 8:
        RES["errors"].append(f"timings stopped before {shape}: deadline")
        break
    n, k = shape
    g = convrot.group_for(k)
    x = data(shape, "normal")
    nbytes = x.numel() * 2 + n * k + n * 4           # read bf16 + write int8 codes + fp32 row scales
    rot_pre = tq.rotate_chunk(x, g)
    fns = {"ours-whole(old)": lambda: tq.quantize_int8_convrot_async(x, g)}
    for kb in CHUNKS_KB:
        fns[f"ours-chunk{lab(kb)}"] = (lambda kb=kb: with_chunks(kb, lambda: tq.quantize_int8_convrot_async(x, g)))
    for nm, c in AUTO.items():
        fns[nm] = (lambda c=c: with_cfg(c, lambda: tq.quantize_int8_convrot_async(x, g)))
    for nm, c in FUSED.items():
        if RES["bytes"].get(f"{n}x{k} g{g} normal", {}).get(nm) is not None:      # it compiled and ran
            fns[nm] = (lambda c=c: with_cfg(c, lambda: tq.quantize_int8_convrot_async(x, g)))
    if kcuda is not None:
        fns["kitchen-cuda"] = lambda: kcuda.quantize_int8_convrot_weight(x, g)
    fns["stage: rotation whole (cuBLAS)"] = lambda: tq.rotate_chunk(x, g)
    buf = torch.empty_like(x)

    def rot_chunked(kb):
        for a, b in with_chunks(kb, lambda: tq._rotation_chunks(n, k, 2)):
            tq.rotate_chunk(x[a:b], g, buf[a:b].view(-1, g))
    for kb in CHUNKS_KB[1::3]:
        fns[f"stage: rotation chunks {lab(kb)}"] = (lambda kb=kb: rot_chunked(kb))
    fns["stage: quant alone (int8 rows kernel on the rotated weight)"] = lambda: tq.quantize_int8_rows_async(rot_pre)
    row = {}
    for name, fn in fns.items():
        if left() < 5:
            break
        def one(fn=fn):
            for _ in range(3):
                fn()                                      # compile / warm-up
            sync()
            c, q = t_cold(fn), t_queued(fn)
            return {"cold_ms": round(c, 4), "queued_ms": round(q, 4), "cold_gbs": round(nbytes / c / 1e6, 1),
                    "queued_gbs": round(nbytes / q / 1e6, 1), "cpu_call_us": round(cpu_us(fn), 1)}
        r = guard(f"time {shape} {name}", one)
        if r is not None:
            row[name] = r
            print(f"{n}x{k} {name:62s} cold {r['cold_ms']:.4f} ms {r['cold_gbs']:7.1f} GB/s | queued "
                  f"{r['queued_ms']:.4f} ms {r['queued_gbs']:7.1f} GB/s | cpu {r['cpu_call_us']:.0f} us", flush=True)
    RES["rows"][f"{n}x{k} g{g}"] = row
    RES["bytes_counted"] = "bf16 weight read + int8 codes + fp32 scales written (the issue's GB/s)"
    del x, rot_pre, buf
    save()

# ---- which cuBLAS kernel each M gets ---------------------------------------------------------------------------
def kernels_of(fn):
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as p:
        fn()
        sync()
    return sorted({e.name for e in p.events() if e.device_type.name == "CUDA"})


if left() > 12 and not DRY:
    for shape in SHAPES[:4]:
        g = convrot.group_for(shape[1])
        x = data(shape, "normal")
        ks = {"whole": guard("prof whole", lambda: kernels_of(lambda: tq.rotate_chunk(x, g)))}
        for kb in PROF_KB:
            ch = with_chunks(kb, lambda: tq._rotation_chunks(*shape, 2))
            a, b = ch[-1]
            ks[f"{kb}KB rows={b - a} M={(b - a) * shape[1] // g}"] = guard(
                "prof chunk", lambda: kernels_of(lambda: tq.rotate_chunk(x[a:b], g)))
        RES["cublas_kernels"][f"{shape[0]}x{shape[1]}"] = ks
        print("cublas", shape, json.dumps(ks)[:800], flush=True)
        del x
    save()


save()
print("elapsed", round(time.time() - T0, 1), "s; errors:", len(RES["errors"]))
