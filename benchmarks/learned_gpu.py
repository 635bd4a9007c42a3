"""Learned rounding on real-size 14B layers, on one GPU: quantgate vs round-to-nearest vs convert_to_quant.

    python3 benchmarks/learned_gpu.py --out learned.json [--peer] [--device cuda]

What it measures (one process, one run):
  * four real-size WAN 2.x 14B Linear shapes (2 x 5120x5120, 13824x5120, 5120x13824) with the weights
    the repo's synthetic models use (randn/sqrt(K), outlier input columns x8..x24; bf16), and per layer
    activations from harness.fixtures.synthetic_activations (low-rank correlated + log-normal channel gains with
    outlier channels): 4096 calibration rows, 4096 independent HELD-OUT rows;
  * output SQNR on the held-out rows, 10*log10(|X W^T|^2 / |X (W_q - W)^T|^2), for RTN, quantgate's
    learned rounding (calibrated, and with the data-free weight proxy), and convert_to_quant's learned mode
    (its CLI defaults: prodigy, num_iter 4000, top_p 0.2, min_k 256, max_k 1280; it uses no activations);
  * seconds of each (CUDA-synchronised, after one warm-up of the kernels on a small layer);
  * the whole-14B-layout time: one real-size WAN 2.2 A14B transformer block (its 10 Linears, under
    the wan22-a14b preset's decisions for the target) timed through the same engine convert uses, times
    the number of blocks (40); the few non-block Linears (embeddings, head) are kept in bf16 by the preset.
Nothing is downloaded; everything is generated from seeds on the device.
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

from harness.fixtures.synthetic_activations import activations  # noqa: E402
from quant.kernels import fp8 as _fp8  # noqa: E402
from quant.kernels import nvfp4 as _nv  # noqa: E402
from quant.rounding import engine  # noqa: E402
from quant.rounding import learned as L  # noqa: E402

LAYERS = [("blocks.0.self_attn.q", (5120, 5120)), ("blocks.0.cross_attn.o", (5120, 5120)),
          ("blocks.0.ffn.0", (13824, 5120)), ("blocks.0.ffn.2", (5120, 13824))]
CALIB_ROWS = HELD_ROWS = 4096


def weight(shape, seed, device):
    g = torch.Generator(device=device).manual_seed(seed)
    n, k = shape
    w = torch.randn(shape, generator=g, device=device) / math.sqrt(k)
    cols = torch.randperm(k, generator=g, device=device)[: max(1, k // 128)]
    w[:, cols] *= 8.0 + 16.0 * torch.rand(len(cols), generator=g, device=device)
    return w.to(torch.bfloat16)


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def sqnr(w, wq, x):
    w = w.float()
    y = x @ w.T
    e = x @ (wq.float() - w).T
    return 10 * math.log10(float((y.double() ** 2).sum()) / float((e.double() ** 2).sum()))


def decode(action, tensors, shape):
    if action == "fp8":
        q, s = tensors
        return _fp8.dequantize(q, s)
    p, bs, s2 = tensors
    return _nv.dequantize(p, bs, s2, shape)


def on_grid(action, wq_tensors):
    """Every code decodes to a grid value: fp8 codes are finite e4m3fn, nvfp4 codes are nibbles (always)."""
    if action == "fp8":
        return bool(torch.isfinite(wq_tensors[0].float()).all())
    return wq_tensors[0].dtype == torch.uint8


def ours(action, names, ws, calib, device, cfg):
    jobs = [engine.Job(n + ".weight", n, action, tuple(ws[n].shape)) for n in names]
    stats = engine.Stats()
    sync(device)
    t0 = time.perf_counter()
    out = {j.layer: tuple(x.to(device) for x in t) for j, t in engine.run(jobs, lambda nm: ws[nm[: -len(".weight")]], device=device, cfg=cfg,
                                              calibration=calib, stats=stats)}
    sync(device)
    return out, time.perf_counter() - t0, stats


class _Calib:
    """Activation samples held in memory (the file reader's interface)."""

    def __init__(self, rows):
        self.rows_ = rows

    def __contains__(self, layer):
        return layer in self.rows_

    def rows(self, layer, k):
        return self.rows_[layer]


def peer(action, w, device, iters=4000):
    from convert_to_quant.converters import LearnedNVFP4Converter, LearnedRoundingConverter
    kw = dict(optimizer="prodigy", num_iter=iters, lr=1.0, top_p=0.2, min_k=256, max_k=1280, device=device)
    sync(device)
    t0 = time.perf_counter()
    if action == "fp8":
        c = LearnedRoundingConverter(scaling_mode="tensor", target_format="fp8", **kw)
        q, dscale, deq, _ = c.convert(w)
        tensors = (q, dscale.reshape(()).float())
    else:
        c = LearnedNVFP4Converter(**kw)
        p, bs, s2, deq, _ = c.convert(w)
        tensors = (p, bs, s2.float())
    sync(device)
    dt = time.perf_counter() - t0
    wq = decode(action, tensors, tuple(w.shape)).float()
    return wq, dt, float((wq - deq[: w.shape[0], : w.shape[1]].float()).abs().max())


def block_time(action_target, device, cfg, scale=1.0):
    """One WAN 2.2 A14B block under the wan22-a14b preset for ``action_target``; returns (s, per-action count)."""
    from quant import arch, presets
    a = arch.get("wan22-t2v-a14b")
    tensors = [(n, "BF16", tuple(max(16, int(x * scale) // 16 * 16) if len(s) == 2 else x for x in s))
               for n, s in a.tensors() if n.startswith("blocks.0.")]
    plan = presets.plan(presets.load("wan22-a14b"), action_target, tensors, source="bench")
    q = plan.quantized()
    ws, rows = {}, {}
    for i, d in enumerate(q):
        ws[d.layer] = weight(tuple(d.shape), 1000 + i, device)
        rows[d.layer] = activations(d.shape[1], seed=2000 + i, device=device)(CALIB_ROWS)
    jobs = [engine.Job(d.name, d.layer, d.action, tuple(d.shape)) for d in q]
    sync(device)
    t0 = time.perf_counter()
    n = sum(1 for _ in engine.run(jobs, lambda nm: ws[nm[: -len(".weight")]], device=device, cfg=cfg,
                                  calibration=_Calib(rows)))
    sync(device)
    dt = time.perf_counter() - t0
    return dt, {"layers": n, "by_action": plan.by_action(), "blocks": a.params.get("num_layers", 40)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--peer", action="store_true", help="also run convert_to_quant's learned mode")
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the shapes (CPU smoke runs)")
    ap.add_argument("--peer-iters", type=int, default=4000, help="convert_to_quant num_iter (its CLI default 4000)")
    ap.add_argument("--block", default="nvfp4", help="formats whose 14B block time is measured (comma list, or none)")
    args = ap.parse_args(argv)
    dev = args.device
    cfg = L.LearnedConfig(samples=CALIB_ROWS)
    layers = [(n, tuple(max(16, int(round(x * args.scale / 16)) * 16) for x in s)) for n, s in LAYERS]
    res = {"device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
           "torch": torch.__version__, "config": cfg.__dict__, "calib_rows": CALIB_ROWS, "held_out_rows": HELD_ROWS,
           "layers": [{"name": n, "shape": list(s)} for n, s in layers], "formats": {}}
    ws, calib, held = {}, {}, {}
    for i, (n, s) in enumerate(layers):
        ws[n] = weight(s, 10 + i, dev)
        draw = activations(s[1], seed=100 + i, device=dev)
        calib[n], held[n] = draw(CALIB_ROWS), draw(HELD_ROWS)
    # warm-up of every kernel on a small layer (not timed)
    wu = {"w": weight((256, 256), 1, dev)}
    for act in ("fp8", "nvfp4"):
        ours(act, ["w"], wu, None, dev, L.LearnedConfig(iters=10))
    names = [n for n, _ in layers]
    for act in ("fp8", "nvfp4"):
        f = {"layers": {}}
        sync(dev)
        t0 = time.perf_counter()
        rtn = {n: (_fp8.quantize(ws[n]) if act == "fp8" else _nv.quantize(ws[n])) for n in names}
        sync(dev)
        f["rtn_s"] = time.perf_counter() - t0
        if dev.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        out, f["learned_s"], st = ours(act, names, ws, _Calib(calib), dev, cfg)
        f["learned_stats"] = st.as_dict()
        if dev.startswith("cuda"):
            f["learned_peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        out_p, f["learned_proxy_s"], _ = ours(act, names, ws, None, dev, cfg)
        for n, s in layers:
            row = {"rtn_db": sqnr(ws[n], decode(act, rtn[n], s), held[n]),
                   "learned_db": sqnr(ws[n], decode(act, out[n], s), held[n]),
                   "learned_calib_rows_gain_db": st.gains_db[n], "iters": st.iters[n],
                   "learned_proxy_db": sqnr(ws[n], decode(act, out_p[n], s), held[n]),
                   "on_grid": on_grid(act, out[n])}
            if act == "nvfp4":   # RTN's scales are kept: the scale tensors must be byte-identical
                row["scales_identical_to_rtn"] = bool(torch.equal(out[n][1].view(torch.uint8).cpu(),
                                                                  rtn[n][1].view(torch.uint8).cpu()))
            f["layers"][n] = row
        if act in args.block.split(","):
            dt, info = block_time(act, dev, cfg, args.scale)
            f["block_s"], f["block"] = dt, info
            f["est_14b_s"] = dt * info["blocks"]
        res["formats"][act] = f
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
        print(act, json.dumps({k: v for k, v in f.items() if k != "layers"}, default=str), flush=True)
    if args.peer:      # last, so a slow peer cannot cost the results above
        for act in ("fp8", "nvfp4"):
            f = res["formats"][act]
            f["peer_s"] = 0.0
            for n, s in layers:
                wq, dt, dmax = peer(act, ws[n], dev, args.peer_iters)
                f["layers"][n]["peer_db"] = sqnr(ws[n], wq, held[n])
                f["layers"][n]["peer_decode_vs_its_dequant_maxabs"] = dmax
                f["peer_s"] += dt
                Path(args.out).write_text(json.dumps(res, indent=1, default=str))
            pe = [r["peer_db"] - r["rtn_db"] for r in f["layers"].values()]
            f["peer_gain_db_mean"], f["peer_gain_db_worst"] = sum(pe) / len(pe), min(pe)
            f["learned_minus_peer_db_worst"] = min(r["learned_db"] - r["peer_db"] for r in f["layers"].values())
            print(act, "peer", json.dumps({k: v for k, v in f.items() if k.startswith(("peer", "learned_minus"))}),
                  flush=True)
    res["summary"] = summarise(res)
    Path(args.out).write_text(json.dumps(res, indent=1, default=str))
    return res


def summarise(res: dict) -> dict:
    """Mean and worst-layer dB over RTN on the held-out rows, per format and method."""
    out = {}
    for act, f in res["formats"].items():
        rows = list(f["layers"].values())
        o = {}
        for key, col in (("learned", "learned_db"), ("learned_data_free_proxy", "learned_proxy_db"), ("peer", "peer_db")):
            if all(col in r for r in rows):
                g = [r[col] - r["rtn_db"] for r in rows]
                o[key] = {"gain_db_mean": round(sum(g) / len(g), 3), "gain_db_worst": round(min(g), 3)}
        o["seconds"] = {k: round(f[k], 3) for k in ("rtn_s", "learned_s", "learned_proxy_s", "peer_s") if k in f}
        if "est_14b_s" in f:
            o["est_14b_s"] = round(f["est_14b_s"], 1)
        out[act] = o
    return out


if __name__ == "__main__":
    main()
