"""Issue 25, lever 2 (smoothing, ``pre_quant_scale``), measured per layer on the trained tiny reference model
(CPU, one run) -- not written into files (see README "Quality ladder": why).

    python benchmarks/fidelity_smoothing.py [-o benchmarks/results/cpu-fidelity-smoothing-DATE.json]

ComfyUI 0.33.0's MixedPrecisionOps.Linear.forward multiplies the input by ``pre_quant_scale`` (per input
channel) before the NVFP4 matmul (comfy/ops.py, "ModelOpt AWQ-style smoothing"); ComfyUI 0.3.75 has no such
code. A smoothed layer stores W' = W diag(s) quantized and pre_quant_scale = 1/s: y = (x / s) Q(W diag(s))^T.
AWQ's search: s_k = mean|x_k|^alpha (normalised to geometric mean 1), alpha per layer from {0, 0.125, ..., 1}
by the output error on the CALIBRATION rows (sampler seeds 11-13); scored on HELD-OUT rows (seeds 21-23):
  * weight-only: 10 log10(|X W^T|^2 / |X (W_eff - W)^T|^2), W_eff = Q(W diag(s)) diag(1/s);
  * activations emulated as ComfyUI runs NVFP4 natively (dynamic per-16-block NVFP4 of x / s):
    10 log10(|X W^T|^2 / |Q_a(X/s) Q(W diag(s))^T - X W^T|^2).
Pooled over the block Linears (sums of squares). RTN NVFP4 (alpha = 0) is the baseline.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ALPHAS = tuple(i / 8 for i in range(9))


def main(argv=None) -> int:
    import torch
    torch.set_num_threads(1)
    from harness.activations.record import record
    from harness.train.tiny_model import load_model
    from quant.kernels import nvfp4 as _nv
    from quant.sources import open_source
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-fidelity-smoothing-{datetime.date.today()}.json"))
    ap.add_argument("--model", default=str(ROOT / "harness" / "train" / "wan21-t2v-tiny.safetensors"))
    a = ap.parse_args(argv)
    with open_source(a.model) as s:
        ws = {n[: -len(".weight")]: s.get(n).float() for n in s.keys()
              if n.startswith("blocks.") and n.endswith(".weight") and len(s.info(n).shape) == 2}
    layers = sorted(ws)
    t0 = time.perf_counter()
    model = load_model(a.model)
    calib = record(model, layers, seeds=(11, 12, 13), rows=4096, seed=0)
    held = record(model, layers, seeds=(21, 22, 23), rows=4096, seed=1)
    t_rec = time.perf_counter() - t0

    def q(w):
        return _nv.dequantize(*_nv.quantize(w), shape=tuple(w.shape))

    def qa(x):
        return _nv.dequantize(*_nv.quantize(x), shape=tuple(x.shape))

    def errs(w, x, s):
        ws_ = q(w * s)                                    # Q(W diag(s))
        xs = x / s
        y = x @ w.T
        e_w = x @ (ws_ / s - w).T                          # weight-only, effective weight
        e_a = qa(xs) @ ws_.T - y                           # activations quantized as ComfyUI does natively
        return float(y.double().pow(2).sum()), float(e_w.double().pow(2).sum()), float(e_a.double().pow(2).sum())

    def scales(x, alpha):
        m = x.abs().mean(0).clamp_min(1e-8) ** alpha
        return m / torch.exp(torch.log(m).mean())

    tot = {"rtn": [0.0, 0.0, 0.0], "smoothed": [0.0, 0.0, 0.0]}
    per = {}
    t1 = time.perf_counter()
    for n in layers:
        w, xc, xh = ws[n], calib[n], held[n]
        best = None
        for al in ALPHAS:                                   # AWQ: alpha by the calibration output error
            s = scales(xc, al)
            _, e_w, e_a = errs(w, xc, s)
            if best is None or e_a < best[0]:
                best = (e_a, al)
        al = best[1]
        r = errs(w, xh, torch.ones(w.shape[1]))
        sm = errs(w, xh, scales(xc, al))
        for k, v in (("rtn", r), ("smoothed", sm)):
            tot[k] = [t + x for t, x in zip(tot[k], v)]
        per[n] = {"alpha": al, "rtn_weight_only_db": round(10 * math.log10(r[0] / r[1]), 3),
                  "smoothed_weight_only_db": round(10 * math.log10(sm[0] / sm[1]), 3),
                  "rtn_emulated_db": round(10 * math.log10(r[0] / r[2]), 3),
                  "smoothed_emulated_db": round(10 * math.log10(sm[0] / sm[2]), 3)}
    res = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": Path(a.model).name,
           "layers": len(layers), "record_seconds": round(t_rec, 1), "seconds": round(time.perf_counter() - t1, 1),
           "alphas": ALPHAS,
           "pooled": {k: {"weight_only_db": round(10 * math.log10(v[0] / v[1]), 3),
                          "emulated_db": round(10 * math.log10(v[0] / v[2]), 3)} for k, v in tot.items()},
           "layers_detail": per}
    Path(a.output).write_text(json.dumps(res, indent=1) + "\n")
    for k, v in res["pooled"].items():
        print(f"{k:<9} held-out output SQNR weight-only {v['weight_only_db']:.3f} dB, activations emulated "
              f"{v['emulated_db']:.3f} dB")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
