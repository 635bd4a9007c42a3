"""Issue 25, `--budget-bits 5.5`: the exact upper bound of the pooled weight SQNR of the block Linears that ANY
per-layer assignment of the formats quantgate writes can reach at a byte budget, on the trained tiny model.

    python benchmarks/budget_bound.py [-o benchmarks/results/cpu-budget-bound-DATE.json]

Per block Linear (60 of them) and per choice -- source precision (bf16), NVFP4 (RTN and with the weight-error
scale search: the default's codes -2..+5 and an exhaustive-end search over -16..+24 codes and 8 global
scales), FP8, INT8 (per row), INT8 ConvRot, MXFP8, W4A8-INT8, W4A4 ConvRot -- it measures the squared
weight error ||W_q - W||^2 (the format's own quantize + dequantize) and the bytes the layer costs in a file:
its tensors' data, their header entries and its `_quantization_metadata` entry. (GPTQ and learned rounding
minimise the OUTPUT error; for the weight error they are no better than the weight-error scale search, so
the weight-metric bound does not need them.) Then a multiple-choice knapsack picks one choice per layer
minimising the total error under the budget:

* greedy by error removed per byte (what `quant.budget.allocate` does), and
* an exact dynamic programme over bytes (every byte count 0..budget, one layer at a time),

for the budgets: (A) `--budget-bits B` for B in a sweep incl. 5.5 (bytes of the weights' data + scales, as
quant.budget counts them) and (B) a whole file no larger than GGUF Q5_0's (2,626,016 bytes), the layers
outside the blocks as the default preset keeps them (the file's fixed part measured from a written file).
The bound is 10 log10(sum ||W||^2 / min total error). Also reported: the same with only NVFP4/FP8/source
(today's `--budget-bits` choices) and the single-format SQNRs that explain the arithmetic.
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
SRC = ROOT / "harness" / "train" / "wan21-t2v-tiny.safetensors"
Q5_0_BYTES = 2_626_016          # GGUF Q5_0 of the same source (cpu-fidelity-ladder-2026-12-07.json)
Q5_0_SQNR = 28.05
FORMATS = ("nvfp4", "fp8", "int8", "int8-convrot", "mxfp8", "w4a8-int8", "w4a4-convrot")
WIDE_OFFSETS = tuple(range(-16, 25))           # e4m3 code steps: 2^(-2) .. 2^3 times RTN's block scale
WIDE_GLOBAL = tuple(2.0 ** (i / 64) for i in range(8))   # 8 global scales inside one e4m3 step (2^(1/8))
TODAY = ("keep", "nvfp4", "nvfp4+mse", "fp8")     # what --budget-bits chooses among today


def _entry_len(key: str, t) -> int:
    """Bytes of one tensor's header entry: "key":{"dtype":..,"shape":[..],"data_offsets":[a,b]}, (7-digit offsets)."""
    from quant.safetensors_io import DTYPE_NAMES
    e = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [1_000_000, 1_000_000]}
    return len(json.dumps({key: e}, separators=(",", ":"))) - 2 + 1


def _meta_len(layer: str, conf: dict | None) -> int:
    """Bytes of a layer's entry in the header's _quantization_metadata string (escaped JSON)."""
    if conf is None:
        return 0
    s = json.dumps({layer: conf})[1:-1] + ", "
    return len(json.dumps(s)) - 2


def measure(layers: dict, searches=("nvfp4+mse", "nvfp4+wide")) -> dict:
    """layer -> choice -> {"err", "data", "bytes"} (data = weight + scales, bytes = data + header + metadata)."""
    import torch

    from quant import formats
    from quant.rounding import scale_search
    out = {}
    for layer, w in layers.items():
        n, k = w.shape
        wf = w.float()
        row = {"keep": {"err": 0.0, "data": w.numel() * w.element_size(),
                        "bytes": w.numel() * w.element_size() + _entry_len(f"{layer}.weight", w)}}
        for name in FORMATS + tuple(searches):
            fmt = formats.get(name.split("+")[0])
            if fmt.refuses(n, k):
                continue
            if name in ("nvfp4+mse", "nvfp4+wide"):  # wide: the exhaustive end (scales 1/4..8x RTN's, s2 in a step)
                kw = {"offsets": WIDE_OFFSETS, "global_factors": WIDE_GLOBAL} if name == "nvfp4+wide" else {}
                p, bs, s2 = scale_search.quantize(w, objective="mse", **kw)
                raw = {"weight": p, "weight_scale": bs, "weight_scale_2": s2}
            else:
                raw = fmt.quantize(w)
            d = fmt.dequantize(raw, (n, k), torch.float32)
            tens = fmt.layer_tensors(layer, raw)
            conf = fmt.layer_config(False, None, fmt.raw_nk(raw))
            data = sum(t.numel() * t.element_size() for key, t in tens.items() if not key.endswith(".comfy_quant"))
            size = sum(t.numel() * t.element_size() + _entry_len(key, t) for key, t in tens.items())
            row[name] = {"err": float((d.double() - wf.double()).pow(2).sum()), "data": data,
                         "bytes": size + _meta_len(layer, conf)}
        row["_ref"] = float(wf.double().pow(2).sum())
        out[layer] = row
    return out


def exact(rows: dict, allowed, cap: int, key: str) -> tuple[float, dict]:
    """Least total error of one choice per layer with sum of ``key`` bytes <= cap (dynamic programme over
    every byte count; exact). Returns (error, {layer: choice})."""
    import numpy as np
    names = list(rows)
    inf = np.inf
    dp = np.full(cap + 1, inf)
    dp[0] = 0.0
    picks = []
    for layer in names:
        opts = [(c, rows[layer][c][key], rows[layer][c]["err"]) for c in allowed if c in rows[layer]]
        new = np.full(cap + 1, inf)
        arg = np.full(cap + 1, -1, dtype=np.int16)
        for j, (_, b, e) in enumerate(opts):
            if b > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[b:] = dp[: cap + 1 - b] + e
            better = cand < new
            new[better] = cand[better]
            arg[better] = j
        picks.append((opts, arg))
        dp = new
    c = int(np.argmin(dp))
    best = float(dp[c])
    if not math.isfinite(best):
        return inf, {}
    choice = {}
    for layer, (opts, arg) in zip(reversed(names), reversed(picks)):
        j = int(arg[c])
        choice[layer] = opts[j][0]
        c -= opts[j][1]
    return best, choice


def greedy(rows: dict, allowed, cap: int, key: str) -> tuple[float, dict]:
    """quant.budget.allocate's rule on these choices: start at each layer's cheapest, take the upgrade with the
    most error removed per byte that fits, until none fits."""
    cur = {}
    for layer, r in rows.items():
        opts = [c for c in allowed if c in r]
        cur[layer] = min(opts, key=lambda c: (r[c][key], r[c]["err"]))
    used = sum(rows[l][c][key] for l, c in cur.items())
    if used > cap:
        return math.inf, {}
    while True:
        best = None
        for layer, r in rows.items():
            c0 = cur[layer]
            for c in allowed:
                if c not in r:
                    continue
                db = r[c][key] - r[c0][key]
                de = r[c0]["err"] - r[c]["err"]
                if db <= 0 or de <= 0 or used + db > cap:
                    continue
                if best is None or de / db > best[0]:
                    best = (de / db, layer, c, db)
        if best is None:
            break
        _, layer, c, db = best
        cur[layer] = c
        used += db
    return sum(rows[l][c]["err"] for l, c in cur.items()), cur


def fixed_file_bytes(rows: dict) -> tuple[int, dict]:
    """The default NVFP4-mixed file's bytes outside the block Linears' weights, scales, comfy_quant tensors and
    their header/metadata entries (bias and everything else included), from a file written by convert."""
    from quant.convert import convert
    from quant.safetensors_io import SafetensorsFile
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "rtn.safetensors"
        convert(SRC, p, "nvfp4", force=True, progress=False)
        total = p.stat().st_size
        with SafetensorsFile(p) as f:
            keys = set(f.keys())
        acts = {}
        for layer in rows:
            acts[layer] = ("nvfp4" if f"{layer}.weight_scale_2" in keys else
                           "fp8" if f"{layer}.weight_scale" in keys else "keep")
    return total - sum(rows[l][a]["bytes"] for l, a in acts.items()), {"file_bytes": total, "actions": acts}


def check_bytes(rows: dict, fixed: int) -> dict:
    """The byte model checked on files it was not fitted to: convert to each format with its own preset, read
    every block layer's format from the written header, predict the file's size as fixed + the layers' costs."""
    from quant import formats
    from quant.convert import convert
    from quant.safetensors_io import SafetensorsFile
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for target in ("fp8", "int8", "w4a8-int8", "w4a4-convrot", "mxfp8"):
            p = Path(d) / f"{target}.safetensors"
            convert(SRC, p, target, force=True, progress=False)
            with SafetensorsFile(p) as f:
                meta = json.loads(f.metadata["_quantization_metadata"])["layers"]
            acts = {l: (formats.for_conf(meta[l]).name if l in meta else "keep") for l in rows}
            pred = fixed + sum(rows[l][a]["bytes"] for l, a in acts.items())
            out[target] = {"written": p.stat().st_size, "predicted": pred, "diff": p.stat().st_size - pred}
    return out


def block_linears(src=None) -> dict:
    """The block Linears' weights of the trained model, by layer name (what the pooled SQNR is over)."""
    from quant.sources import open_source
    with open_source(src or SRC) as s:
        return {n[: -len(".weight")]: s.get(n) for n in s.keys()
                if n.startswith("blocks.") and n.endswith(".weight") and len(s.info(n).shape) == 2}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-budget-bound-{datetime.date.today()}.json"))
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    layers = block_linears()
    rows = measure(layers)
    ref = sum(r["_ref"] for r in rows.values())
    numel = sum(w.numel() for w in layers.values())
    db = lambda e: (math.inf if e == 0 else -math.inf if not math.isfinite(e) else 10 * math.log10(ref / e))  # noqa: E731
    single = {}
    for c in ("keep",) + FORMATS + ("nvfp4+mse", "nvfp4+wide"):
        have = [l for l in rows if c in rows[l]]
        e = sum(rows[l][c]["err"] for l in have)
        single[c] = {"layers": len(have), "sqnr_db": round(db(e), 3) if len(have) == len(rows) else None,
                     "bits_per_weight": round(8 * sum(rows[l][c]["data"] for l in have) /
                                          sum(layers[l].numel() for l in have), 4)}
    fixed, rtn = fixed_file_bytes(rows)
    checked = check_bytes(rows, fixed)
    print("byte model vs written files:", checked, flush=True)
    all_choices = ("keep",) + FORMATS + ("nvfp4+mse", "nvfp4+wide")
    results = {"bits": [], "file": {}}
    for bits in (4.5, 5.0, 5.5, 5.76, 6.0, 6.5, 7.0, 7.5, 8.0):
        cap = int(bits / 8 * numel)
        rec = {"budget_bits": bits, "cap_bytes": cap}
        for label, allowed in (("today", TODAY), ("all", all_choices)):
            e_dp, ch = exact(rows, allowed, cap, "data")
            e_g, _ = greedy(rows, allowed, cap, "data")
            rec[label] = {"exact_db": round(db(e_dp), 3), "greedy_db": round(db(e_g), 3),
                          "counts": _counts(ch)}
        results["bits"].append(rec)
        print(f"{bits:5.2f} bits: today exact {rec['today']['exact_db']:6.2f} (greedy {rec['today']['greedy_db']:6.2f}) | "
              f"all formats exact {rec['all']['exact_db']:6.2f} (greedy {rec['all']['greedy_db']:6.2f}) {rec['all']['counts']}",
              flush=True)
    cap = Q5_0_BYTES - fixed
    for label, allowed in (("today", TODAY), ("all", all_choices)):
        e_dp, ch = exact(rows, allowed, cap, "bytes")
        e_g, _ = greedy(rows, allowed, cap, "bytes")
        bits_used = 8 * sum(rows[l][c]["data"] for l, c in ch.items()) / numel
        results["file"][label] = {"exact_db": round(db(e_dp), 3), "greedy_db": round(db(e_g), 3), "counts": _counts(ch),
                                  "bits_per_weight": round(bits_used, 4), "choice": ch}
        print(f"file <= Q5_0 ({Q5_0_BYTES:,} B; fixed part {fixed:,} B, blocks get {cap:,} B): {label} exact "
              f"{db(e_dp):.2f} dB (greedy {db(e_g):.2f}) at {bits_used:.3f} bits {_counts(ch)}", flush=True)
    # the arithmetic: the least bits a weight at which the exact bound reaches Q5_0's SQNR
    lo, hi = 4.5, 8.5
    for _ in range(20):
        mid = (lo + hi) / 2
        e, _ = exact(rows, all_choices, int(mid / 8 * numel), "data")
        lo, hi = (lo, mid) if db(e) >= Q5_0_SQNR else (mid, hi)
    out = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": SRC.name,
           "layers": len(rows), "weights": numel, "q5_0": {"bytes": Q5_0_BYTES, "weight_sqnr_db": Q5_0_SQNR},
           "single_format": single, "fixed_file_bytes": fixed,
           "fixed_from_default_nvfp4_file_bytes": rtn["file_bytes"], "byte_model_check": checked,
           "bits_needed_for_q5_0_sqnr": round(hi, 3), "sweep": results["bits"], "file_le_q5_0": results["file"],
           "per_layer": {l: {c: v for c, v in r.items()} for l, r in rows.items()},
           "seconds": round(time.perf_counter() - t0, 1)}
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    print(f"single formats: " + ", ".join(f"{c} {v['sqnr_db']} dB @ {v['bits_per_weight']} b" for c, v in single.items()))
    print(f"least bits a weight for >= {Q5_0_SQNR} dB with every format: {hi:.3f}; written {a.output}")
    return 0


def _counts(ch: dict) -> dict:
    out: dict = {}
    for c in ch.values():
        out[c] = out.get(c, 0) + 1
    return out


if __name__ == "__main__":
    raise SystemExit(main())
