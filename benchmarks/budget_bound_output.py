"""Issue 25: would the new formats improve the RECOMMENDED recipe's mix? The exact best per-layer assignment under
the recipe's own metric -- each block Linear's OUTPUT error on held-out activation rows -- with and without
INT8 / INT8 ConvRot / MXFP8 / W4A8 / W4A4, on the trained tiny model.

    python benchmarks/budget_bound_output.py [-o benchmarks/results/cpu-budget-bound-output-DATE.json]

Rows: harness.activations.record on sampler seeds 11-13 (calibration: GPTQ's and the output scale search's
Gram matrix) and 21-23 (held-out: the error measured). Per layer and choice, the pooled output SQNR counts
sum ||X W^T||^2 / sum ||X (W_q - W)^T||^2 over the held-out rows (weights quantized, activations not: the
weight-only render's error). Choices: source precision; NVFP4 RTN / output scale search / GPTQ + output scale
search (the recipe); FP8 RTN / GPTQ; and the new formats as they quantize (round-to-nearest: quantgate has
no GPTQ for them). Bytes per layer as in budget_bound.py. Exact dynamic programme over bytes at the recipe's
size (the default preset's bits, 5.81) and at GGUF Q5_0's file bytes.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

import budget_bound as B  # noqa: E402

TODAY = ("keep", "nvfp4", "nvfp4+out", "nvfp4+gptq", "fp8", "fp8+gptq")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-budget-bound-output-{datetime.date.today()}.json"))
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from harness.activations.record import record_file
    from quant import formats
    from quant.activations.samples import ActivationSamples
    from quant.rounding import gptq, scale_search
    t0 = time.perf_counter()
    layers = B.block_linears()
    tmp = Path(tempfile.mkdtemp(prefix="qg-bound-"))
    record_file(B.SRC, list(layers), tmp / "calib.safetensors", seeds=(11, 12, 13))
    record_file(B.SRC, list(layers), tmp / "held.safetensors", seeds=(21, 22, 23))
    cal, held = ActivationSamples(tmp / "calib.safetensors", 4096, 0), ActivationSamples(tmp / "held.safetensors", 4096, 0)
    sizes = B.measure(layers, searches=())        # bytes (and weight errors) per format
    rows, ref = {}, 0.0
    for layer, w in layers.items():
        n, k = w.shape
        wf = w.float()
        x, xh = cal.rows(layer, k), held.rows(layer, k)
        h = x.T @ x / x.shape[0]
        y = xh @ wf.T
        r_ref = float(y.double().pow(2).sum())
        ref += r_ref
        nv, f8 = formats.get("nvfp4"), formats.get("fp8")
        deq = {}
        for name in B.FORMATS:
            fmt = formats.get(name)
            if not fmt.refuses(n, k):
                deq[name] = fmt.dequantize(fmt.quantize(w), (n, k), torch.float32)
        p, bs, s2 = scale_search.quantize(w, h=h, objective="output")
        deq["nvfp4+out"] = nv.dequantize({"weight": p, "weight_scale": bs, "weight_scale_2": s2}, (n, k), torch.float32)
        p, bs, s2 = gptq.quantize("nvfp4", w, h)
        deq["nvfp4+gptq"] = nv.dequantize({"weight": p, "weight_scale": bs, "weight_scale_2": s2}, (n, k), torch.float32)
        q8, sc = gptq.quantize("fp8", w, h)
        deq["fp8+gptq"] = f8.dequantize({"weight": q8, "weight_scale": sc}, (n, k), torch.float32)
        row = {"keep": {"err": 0.0, **{b: sizes[layer]["keep"][b] for b in ("data", "bytes")}}}
        for c, d in deq.items():
            base = c.split("+")[0]
            row[c] = {"err": float((xh @ (d - wf).T).double().pow(2).sum()),
                      "data": sizes[layer][base]["data"], "bytes": sizes[layer][base]["bytes"]}
        rows[layer] = row
    cal.close()
    held.close()
    numel = sum(w.numel() for w in layers.values())
    db = lambda e: (math.inf if e == 0 else -math.inf if not math.isfinite(e) else 10 * math.log10(ref / e))  # noqa: E731
    fixed, _ = B.fixed_file_bytes(sizes)
    everything = TODAY + tuple(f for f in B.FORMATS if f not in ("nvfp4", "fp8"))
    single = {c: round(db(sum(r[c]["err"] for r in rows.values())), 3)
              for c in everything if all(c in r for r in rows.values())}
    res = {}
    for label, cap, key in (("recipe size 5.81 bits", int(5.81 / 8 * numel), "data"),
                            ("5.5 bits", int(5.5 / 8 * numel), "data"),
                            ("file <= GGUF Q5_0", B.Q5_0_BYTES - fixed, "bytes")):
        res[label] = {}
        for which, allowed in (("today", TODAY), ("all", everything)):
            e, ch = B.exact(rows, allowed, cap, key)
            res[label][which] = {"exact_db": round(db(e), 3), "counts": B._counts(ch)}
        print(f"{label:<22} today {res[label]['today']['exact_db']:6.2f} dB {res[label]['today']['counts']} | "
              f"all {res[label]['all']['exact_db']:6.2f} dB {res[label]['all']['counts']}", flush=True)
    out = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": B.SRC.name,
           "metric": "pooled output SQNR on held-out rows (seeds 21-23), weights quantized, activations not",
           "single_choice_db": single, "results": res, "seconds": round(time.perf_counter() - t0, 1)}
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    print("single choices:", single)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
