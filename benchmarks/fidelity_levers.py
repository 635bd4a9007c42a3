"""Issue 25's rounding levers, one layer at a time, on the trained tiny reference model (CPU, one run).

    python benchmarks/fidelity_levers.py [-o benchmarks/results/cpu-fidelity-levers-DATE.json] [--work DIR]

Activations: every block Linear's input rows recorded while the model samples like the render workflow
(harness.activations.record: classes 1-3 x 2 sizes): calibration = sampler seeds 11-13, HELD-OUT = seeds
21-23 (never seen by any method). For every block Linear and every method, on NVFP4 and on FP8:
  * weight SQNR  10 log10(|W|^2 / |W_q - W|^2)
  * output SQNR on the held-out rows  10 log10(|X W^T|^2 / |X (W_q - W)^T|^2)
pooled over the layers (sums of squares, like the ladder), and the seconds. Methods: round-to-nearest
(RTN, comfy-kitchen's bytes), NVFP4 scale search (block error "mse" / block output error "output", with
and without the global scale search), GPTQ (with RTN block scales / with the scale search), learned rounding
(sign gradient, recorded activations), learned on the data-free proxy.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import torch
    torch.set_num_threads(1)
    from harness.activations.record import record
    from harness.train.tiny_model import load_model
    from quant.kernels import fp8 as _fp8
    from quant.kernels import nvfp4 as _nv
    from quant.rounding import engine, gptq, scale_search
    from quant.rounding import learned as L
    from quant.sources import open_source

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-fidelity-levers-{datetime.date.today()}.json"))
    ap.add_argument("--work", help="keeps the recorded activations (default: a temporary directory)")
    ap.add_argument("--model", default=str(ROOT / "harness" / "train" / "wan21-t2v-tiny.safetensors"))
    ap.add_argument("--methods", default="", help="run only these methods (separated by ';')")
    a = ap.parse_args(argv)
    work = Path(a.work or tempfile.mkdtemp(prefix="qg-levers-"))
    work.mkdir(parents=True, exist_ok=True)

    with open_source(a.model) as s:
        ws = {n[: -len(".weight")]: s.get(n).float() for n in s.keys()
              if n.startswith("blocks.") and n.endswith(".weight") and len(s.info(n).shape) == 2}
    layers = sorted(ws)
    t0 = time.perf_counter()
    model = load_model(a.model)
    calib = record(model, layers, seeds=(11, 12, 13), rows=4096, seed=0)
    held = record(model, layers, seeds=(21, 22, 23), rows=4096, seed=1)
    t_rec = time.perf_counter() - t0
    hs = {n: (calib[n].T @ calib[n]) / calib[n].shape[0] for n in layers}

    def decode(action, t, shape):
        if action == "fp8":
            return _fp8.dequantize(t[0], t[1])
        return _nv.dequantize(t[0], t[1], t[2], shape)

    class _Cal:
        def __contains__(self, layer):
            return layer in calib

        def rows(self, layer, k):
            return calib[layer]

    def learned(action, data_free=False):
        def run_all():
            jobs = [engine.Job(n + ".weight", n, action, tuple(ws[n].shape)) for n in layers]
            return {j.layer: t for j, t in engine.run(jobs, lambda nm: ws[nm[: -len(".weight")]], device="cpu",
                                                      cfg=L.LearnedConfig(iters=200),
                                                      calibration=None if data_free else _Cal())}
        return run_all

    def per_layer(fn):
        return lambda: {n: fn(n) for n in layers}

    nv_methods = {
        "rtn": per_layer(lambda n: _nv.quantize(ws[n])),
        "search mse": per_layer(lambda n: scale_search.quantize(ws[n], global_factors=(1.0,))),
        "search mse + global": per_layer(lambda n: scale_search.quantize(ws[n],
                                                                         global_factors=scale_search.GLOBAL_FACTORS)),
        "search output": per_layer(lambda n: scale_search.quantize(ws[n], h=hs[n], objective="output",
                                                                   global_factors=(1.0,))),
        "gptq (rtn scales)": per_layer(lambda n: gptq.quantize("nvfp4", ws[n], hs[n],
                                                               gptq.GptqConfig(scale_search=None, bracket=False))),
        "gptq + search mse": per_layer(lambda n: gptq.quantize("nvfp4", ws[n], hs[n],
                                                               gptq.GptqConfig(scale_search="mse", bracket=False))),
        "gptq + search output": per_layer(lambda n: gptq.quantize("nvfp4", ws[n], hs[n],
                                                                  gptq.GptqConfig(scale_search="output", bracket=False))),
        "gptq bracket (rtn scales)": per_layer(lambda n: gptq.quantize("nvfp4", ws[n], hs[n],
                                                                       gptq.GptqConfig(scale_search=None))),
        "gptq bracket + search mse": per_layer(lambda n: gptq.quantize("nvfp4", ws[n], hs[n],
                                                                       gptq.GptqConfig(scale_search="mse"))),
        "gptq bracket + search output": per_layer(lambda n: gptq.quantize("nvfp4", ws[n], hs[n],
                                                                          gptq.GptqConfig(scale_search="output"))),
        **{f"gptq bracket + search output, damp {d}": per_layer(lambda n, d=d: gptq.quantize(
            "nvfp4", ws[n], hs[n], gptq.GptqConfig(damp=d))) for d in (0.1, 1.0)},
        **{f"gptq + search output, damp {d}": per_layer(lambda n, d=d: gptq.quantize("nvfp4", ws[n], hs[n],
                                                                                   gptq.GptqConfig(damp=d, bracket=False)))
           for d in (0.1, 0.3, 1.0, 3.0)},
        **{f"search output, ridge {r}": per_layer(lambda n, r=r: scale_search.quantize(
            ws[n], h=hs[n], objective="output", ridge=r)) for r in (0.1, 0.3, 1.0)},
        "learned (recorded)": learned("nvfp4"),
        "learned (data-free)": learned("nvfp4", True),
    }
    f8_methods = {
        "rtn": per_layer(lambda n: _fp8.quantize(ws[n])),
        "gptq": per_layer(lambda n: gptq.quantize("fp8", ws[n], hs[n], gptq.GptqConfig(bracket=False))),
        **{f"gptq, damp {d}": per_layer(lambda n, d=d: gptq.quantize("fp8", ws[n], hs[n],
                                                                   gptq.GptqConfig(damp=d, bracket=False)))
           for d in (0.1, 0.3, 1.0)},
        "gptq bracket": per_layer(lambda n: gptq.quantize("fp8", ws[n], hs[n])),
        **{f"gptq bracket, damp {d}": per_layer(lambda n, d=d: gptq.quantize("fp8", ws[n], hs[n],
                                                                           gptq.GptqConfig(damp=d)))
           for d in (0.1, 1.0)},
        "learned (recorded)": learned("fp8"),
        "learned (data-free)": learned("fp8", True),
    }
    only = {m.strip() for m in a.methods.split(";") if m.strip()}
    res = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": Path(a.model).name,
           "layers": len(layers), "weights": sum(ws[n].numel() for n in layers),
           "calibration_rows": {n: int(calib[n].shape[0]) for n in layers[:1]},
           "held_out_rows": {n: int(held[n].shape[0]) for n in layers[:1]}, "record_seconds": round(t_rec, 1),
           "formats": {}}
    for action, methods in (("nvfp4", nv_methods), ("fp8", f8_methods)):
        out = {}
        for m, fn in methods.items():
            if only and m not in only:
                continue
            t1 = time.perf_counter()
            got = fn()
            dt = time.perf_counter() - t1
            wr = we = orr = oe = 0.0
            per = {}
            for n in layers:
                w = ws[n].double()
                d = decode(action, got[n], tuple(ws[n].shape)).double()
                x = held[n].double()
                y, e = x @ w.T, x @ (d - w).T
                a_, b_, c_, d_ = float(w.pow(2).sum()), float((d - w).pow(2).sum()), float(y.pow(2).sum()), \
                    float(e.pow(2).sum())
                wr, we, orr, oe = wr + a_, we + b_, orr + c_, oe + d_
                per[n] = {"weight_db": round(10 * math.log10(a_ / b_), 3), "output_db": round(10 * math.log10(c_ / d_), 3)}
            out[m] = {"weight_sqnr_db": round(10 * math.log10(wr / we), 3),
                      "heldout_output_sqnr_db": round(10 * math.log10(orr / oe), 3), "seconds": round(dt, 2),
                      "layers": per}
            print(f"{action:<6} {m:<24} weight {out[m]['weight_sqnr_db']:7.3f} dB  held-out output "
                  f"{out[m]['heldout_output_sqnr_db']:7.3f} dB  {dt:6.1f} s", flush=True)
            res["formats"][action] = out
            Path(a.output).write_text(json.dumps(res, indent=1) + "\n")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
