"""Issue 25's rounding levers on real-size 14B Linears, one GPU, one run: output SQNR on held-out rows.

    python3 benchmarks/fidelity_gpu.py --out fidelity-gpu.json [--peer] [--device cuda] [--scale 1.0]

The same four WAN 2.x 14B Linear shapes, weights and activations as benchmarks/learned_gpu.py (2 x 5120^2,
13824x5120, 5120x13824; bf16 weights with outlier input columns; harness.activations rows: 4096 calibration,
4096 independent HELD-OUT rows). Per format and method: output SQNR on the held-out rows
10 log10(|X W^T|^2 / |X (W_q - W)^T|^2), its gain over round-to-nearest (RTN), the weight SQNR, seconds
(CUDA-synchronised, after a warm-up). Methods: RTN; NVFP4 scale search (block weight error / block output
error); GPTQ (quant.rounding.gptq; NVFP4 with the output scale search; damp 0.1 = the default and 1.0;
codes bracketed to the source weight's grid neighbours = the default, and unbracketed);
learned rounding (sign gradient, calibrated; data-free proxy); convert_to_quant's learned mode (``--peer``,
its CLI defaults). Then the whole-A14B-expert time of GPTQ: one real-size A14B block under the wan22-a14b
preset (its 10 Linears, same-shape layers batched) times 40 blocks.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import learned_gpu as G  # noqa: E402
from harness.fixtures.synthetic_activations import activations  # noqa: E402
from quant.kernels import fp8 as _fp8  # noqa: E402
from quant.kernels import nvfp4 as _nv  # noqa: E402
from quant.rounding import gptq, scale_search  # noqa: E402
from quant.rounding import learned as L  # noqa: E402


def wsqnr(w, wq):
    w = w.double()
    return 10 * math.log10(float(w.pow(2).sum()) / float((wq.double() - w).pow(2).sum()))


def gram(x):
    x = x.float()
    return x.T @ x / x.shape[0]


def gptq_block_time(action, device, cfg, scale=1.0, blocks=1):
    """``blocks`` A14B blocks under the wan22-a14b preset for ``action``; GPTQ with same-shape layers batched
    (across the blocks too, as convert's schedule batches the layers of one host-memory window)."""
    from quant import arch, presets
    a = arch.get("wan22-t2v-a14b")
    tensors = [(n, "BF16", tuple(max(16, int(x * scale) // 16 * 16) if len(s) == 2 else x for x in s))
               for n, s in a.tensors() if n.startswith("blocks.0.")]
    plan = presets.plan(presets.load("wan22-a14b"), action, tensors, source="bench")
    q = plan.quantized() * blocks
    groups: dict = {}
    for i, d in enumerate(q):
        groups.setdefault((d.action, tuple(d.shape)), []).append(i)
    data = {}
    for i, d in enumerate(q):
        data[i] = (G.weight(tuple(d.shape), 1000 + i, device),
                   gram(activations(d.shape[1], seed=2000 + i % 10, device=device)(G.CALIB_ROWS)))
    G.sync(device)
    t0 = time.perf_counter()
    for (act, _), idx in groups.items():
        w = torch.stack([data[i][0] for i in idx])
        h = torch.stack([data[i][1] for i in idx])
        gptq.quantize_batch(act, w, h, cfg)
    G.sync(device)
    dt = time.perf_counter() - t0
    return dt, {"layers": len(q), "by_action": plan.by_action(), "blocks": a.params.get("num_layers", 40),
                "blocks_batched": blocks,
                "batches": {f"{k[0]} {list(k[1])}": len(v) for k, v in groups.items()}}


def gptq_convert_schedule_time(device, blocks, scale=1.0):
    """``blocks`` A14B blocks through the strategy `convert --rounding gptq` runs (quant.rounding.strategy.Gptq:
    its CUDA windows and batches, results moved to the host, in file order) -- the conversion's own schedule,
    Gram matrices from synthetic activation rows made beforehand (the clock covers the rounding only)."""
    from quant import arch, formats, presets
    from quant.quantize import LayerJob
    from quant.rounding import strategy
    a = arch.get("wan22-t2v-a14b")
    tensors = [(n, "BF16", tuple(max(16, int(x * scale) // 16 * 16) if len(s) == 2 else x for x in s))
               for n, s in a.tensors() if any(n.startswith(f"blocks.{b}.") for b in range(blocks))]
    plan = presets.plan(presets.load("wan22-a14b"), "nvfp4", tensors, source="bench")
    fmt = formats.get("nvfp4")
    ws, hs, jobs = {}, {}, []
    for i, d in enumerate(d for d in plan.quantized() if len(d.shape) == 2):
        ws[d.name] = G.weight(tuple(d.shape), 3000 + i, device)
        hs[d.layer] = gram(activations(d.shape[1], seed=4000 + i % 10, device=device)(G.CALIB_ROWS))
        jobs.append(LayerJob(d.layer, d.name, fmt.for_action(d.action), (lambda n=d.name: ws[n]), shape=tuple(d.shape)))

    class _Grams:
        def __init__(self, *a, **k):
            pass

        def gram(self, layer, k, dev):
            return hs[layer]

        def close(self):
            pass

    orig, strategy._Samples = strategy._Samples, _Grams
    try:
        st = strategy.Gptq(gptq.GptqConfig())
        G.sync(device)
        t0 = time.perf_counter()
        n = sum(1 for _ in st.quantize(jobs, backend=None, device=device))
        G.sync(device)
        dt = time.perf_counter() - t0
    finally:
        strategy._Samples = orig
    return dt, {"layers": n, "blocks": blocks}


def main(argv=None):
    global gptq
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peer", action="store_true", help="also run convert_to_quant's learned mode")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the shapes (CPU smoke runs)")
    ap.add_argument("--damp", type=float, default=gptq.GptqConfig.damp, help="GPTQ damp of the recommended recipe")
    ap.add_argument("--damp-alt", type=float, default=1.0, help="a second GPTQ damp (weight-error share)")
    ap.add_argument("--no-block", action="store_true", help="skip the A14B block timing")
    ap.add_argument("--only-block", action="store_true", help="only the A14B expert timing (GPTQ, the recipe)")
    ap.add_argument("--blocks", type=int, nargs="+", default=[1], help="blocks batched together (each a timing)")
    ap.add_argument("--gptq-file", help="time this copy of quant/rounding/gptq.py instead (a before/after run)")
    ap.add_argument("--convert-schedule", type=int, metavar="BLOCKS",
                    help="only: GPTQ of this many A14B blocks through convert's own strategy/schedule (NVFP4 recipe)")
    ap.add_argument("--formats", default="nvfp4,fp8", help="comma-separated: nvfp4, fp8")
    a = ap.parse_args(argv)
    if a.convert_schedule:
        gptq_convert_schedule_time(a.device, 1, a.scale / 8)                    # warm-up, small
        dt, info = gptq_convert_schedule_time(a.device, a.convert_schedule, a.scale)
        res = {"device": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu",
               "torch": torch.__version__, "what": "GPTQ (the recipe, NVFP4 preset wan22-a14b) of A14B blocks through "
               "quant.rounding.strategy.Gptq (convert's schedule)", "seconds": round(dt, 3), **info,
               "expert_est_s": round(dt * 40 / a.convert_schedule, 1)}
        print(json.dumps(res), flush=True)
        Path(a.out).write_text(json.dumps(res, indent=1))
        return res
    if a.gptq_file:
        import importlib.util
        spec = importlib.util.spec_from_file_location("gptq_under_test", a.gptq_file)
        gptq = sys.modules["gptq_under_test"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(gptq)
    dev = a.device
    layers = [(n, tuple(max(16, int(round(x * a.scale / 16)) * 16) for x in s)) for n, s in G.LAYERS]
    names = [n for n, _ in layers]
    res = {"device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu", "torch": torch.__version__,
           "gptq_file": a.gptq_file or "quant/rounding/gptq.py",
           "calib_rows": G.CALIB_ROWS, "held_out_rows": G.HELD_ROWS,
           "layers": [{"name": n, "shape": list(s)} for n, s in layers], "formats": {}}
    ws, calib, held, hs = {}, {}, {}, {}
    for i, (n, s) in enumerate(layers):
        ws[n] = G.weight(s, 10 + i, dev)
        draw = activations(s[1], seed=100 + i, device=dev)
        calib[n], held[n] = draw(G.CALIB_ROWS), draw(G.HELD_ROWS)
        hs[n] = gram(calib[n])
    # warm-up (not timed)
    wu = G.weight((256, 256), 1, dev)
    hu = gram(activations(256, seed=1, device=dev)(512))
    for act in ("fp8", "nvfp4"):
        G.ours(act, ["w"], {"w": wu}, None, dev, L.LearnedConfig(iters=10))
        gptq.quantize(act, wu, hu)
    scale_search.quantize(wu, h=hu, objective="output")
    cfg_l = L.LearnedConfig(samples=G.CALIB_ROWS)

    def timed(fn):
        G.sync(dev)
        t0 = time.perf_counter()
        out = fn()
        G.sync(dev)
        return out, time.perf_counter() - t0

    def per_layer(fn):
        return lambda: {n: fn(n) for n in names}

    def batched(act, cfg):
        def run():
            out = {}
            by_shape: dict = {}
            for n, s in layers:
                by_shape.setdefault(s, []).append(n)
            for s, ns in by_shape.items():
                r = gptq.quantize_batch(act, torch.stack([ws[n] for n in ns]), torch.stack([hs[n] for n in ns]), cfg)
                out.update(dict(zip(ns, r)))
            return out
        return run

    def learned(act, calibrated=True):
        def run():
            out, _, _ = G.ours(act, names, ws, G._Calib(calib) if calibrated else None, dev, cfg_l)
            return out
        return run

    methods = {
        "nvfp4": {
            "rtn": per_layer(lambda n: _nv.quantize(ws[n])),
            "scale search (block weight error)": per_layer(lambda n: scale_search.quantize(ws[n])),
            "scale search (block output error)": per_layer(lambda n: scale_search.quantize(ws[n], h=hs[n],
                                                                                           objective="output")),
            f"gptq + output scale search, damp {a.damp}": batched("nvfp4", gptq.GptqConfig(damp=a.damp)),
            f"gptq + output scale search, damp {a.damp_alt}": batched("nvfp4", gptq.GptqConfig(damp=a.damp_alt)),
            "gptq, rtn scales": batched("nvfp4", gptq.GptqConfig(damp=a.damp, scale_search=None)),
            "gptq unbracketed + output scale search": batched("nvfp4", gptq.GptqConfig(damp=a.damp, bracket=False)),
            "learned (calibrated)": learned("nvfp4"),
            "learned (data-free proxy)": learned("nvfp4", False),
        },
        "fp8": {
            "rtn": per_layer(lambda n: _fp8.quantize(ws[n])),
            f"gptq, damp {a.damp}": batched("fp8", gptq.GptqConfig(damp=a.damp)),
            f"gptq, damp {a.damp_alt}": batched("fp8", gptq.GptqConfig(damp=a.damp_alt)),
            "gptq unbracketed": batched("fp8", gptq.GptqConfig(damp=a.damp, bracket=False)),
            "learned (calibrated)": learned("fp8"),
            "learned (data-free proxy)": learned("fp8", False),
        },
    }
    if a.only_block:
        methods = {k: {} for k in methods}
    methods = {k: v for k, v in methods.items() if k in a.formats.split(",")}
    for act, ms in methods.items():
        f = res["formats"].setdefault(act, {"methods": {}})
        rtn_db = None
        for m, fn in ms.items():
            out, dt = timed(fn)
            per = {}
            for n, s in layers:
                wq = G.decode(act, out[n], s)
                per[n] = {"output_db": round(G.sqnr(ws[n], wq, held[n]), 3), "weight_db": round(wsqnr(ws[n], wq), 3)}
            if m == "rtn":
                rtn_db = {n: per[n]["output_db"] for n in names}
            g = [per[n]["output_db"] - rtn_db[n] for n in names]
            f["methods"][m] = {"seconds": round(dt, 3), "gain_db_mean": round(sum(g) / len(g), 3),
                               "gain_db_worst": round(min(g), 3), "layers": per}
            print(f"{act:<6} {m:<42} gain {sum(g) / len(g):+.3f} dB (worst {min(g):+.3f})  {dt:7.2f} s", flush=True)
            Path(a.out).write_text(json.dumps(res, indent=1, default=str))
        if a.peer:
            wq_all, tot = {}, 0.0
            for n, s in layers:
                wq, dt, _ = G.peer(act, ws[n], dev)
                wq_all[n], tot = wq, tot + dt
            g = [G.sqnr(ws[n], wq_all[n], held[n]) - rtn_db[n] for n in names]
            f["methods"]["convert_to_quant learned (CLI defaults)"] = {
                "seconds": round(tot, 3), "gain_db_mean": round(sum(g) / len(g), 3), "gain_db_worst": round(min(g), 3)}
            print(f"{act:<6} {'convert_to_quant learned':<42} gain {sum(g) / len(g):+.3f} dB (worst {min(g):+.3f})  "
                  f"{tot:7.2f} s", flush=True)
            Path(a.out).write_text(json.dumps(res, indent=1, default=str))
        for nb in ([] if a.no_block else a.blocks):
            gptq_block_time(act, dev, gptq.GptqConfig(damp=a.damp), a.scale / 8)          # warm-up, small
            dt, info = gptq_block_time(act, dev, gptq.GptqConfig(damp=a.damp), a.scale, nb)
            est = dt * info["blocks"] / nb
            key = "gptq_a14b_block" if nb == 1 else f"gptq_a14b_{nb}_blocks"
            f[key + "_s"], f[key] = round(dt, 3), info
            f["gptq_a14b_expert_est_s" if nb == 1 else f"gptq_a14b_expert_est_s_{nb}_blocks_batched"] = round(est, 1)
            print(f"{act:<6} GPTQ {nb} A14B block(s) batched {dt:.2f} s -> expert (x{info['blocks']}) {est:.0f} s",
                  flush=True)
            Path(a.out).write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
