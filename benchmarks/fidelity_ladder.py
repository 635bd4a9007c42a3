"""Issue 25's table in one run: NVFP4-mixed with each lever beside GGUF Q4_0 / Q4_1 / Q5_0 / Q8_0 and FP8, on the
trained tiny reference model, rendered in one gate run (embedded ComfyUI 0.3.75, the policy's 3 seeds x 2 sizes).

    python benchmarks/fidelity_ladder.py [-o benchmarks/results/cpu-fidelity-ladder-DATE.json] [--work DIR]

1. source: harness/train/wan21-t2v-tiny.safetensors (bf16; the gate renders against its exact fp32 copy);
2. activations: ``calibrate`` statistics (sampler seeds 11-14; input_scale of the candidates with "calibrated")
   and recorded '<layer>.input' rows of every block Linear (harness activations recorder, classes 1-3, sampler
   seeds 11-13) for the levers that need them -- never the gate's seeds 1-3;
3. GGUFs of the same source by city96's type rules (gguf-py quantizes Q4_0/Q4_1/Q5_0/Q8_0 for real);
4. candidates: FP8 (RTN), NVFP4-mixed under the default preset with each lever, ``--budget-bits``;
5. per file: bytes, weight SQNR pooled over the block Linears (10 log10(sum |W|^2 / sum |W_q - W|^2); GGUFs
   dequantized by gguf-py), and from ONE gate run over all files (``gate --no-verify``): mean / min SSIM weight-only
   and with activations emulated (NVFP4/FP8 files), the verdict; ``verify --source`` of every quantgate file.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SRC = ROOT / "harness" / "train" / "wan21-t2v-tiny.safetensors"
GGUF_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q8_0")


def qg(*args, check=True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if check and r.returncode:
        sys.exit(f"quantgate {' '.join(map(str, args[:3]))} failed ({r.returncode}): {r.stderr[-2000:]}")
    return r


def candidates(work: Path) -> list[tuple[str, dict]]:
    """(label, convert keyword options). ``budget_bits`` "preset": the default preset's own bits a weight
    (convert computes it); "q5_0": the bits a weight that make the file no larger than GGUF Q5_0's
    (see :func:`bits_for_bytes`)."""
    acts, calib = work / "acts.safetensors", work / "calib.json"
    gq = {"rounding": "gptq", "act_samples": acts}
    return [
        ("fp8", {"target": "fp8"}),
        ("nvfp4_rtn", {"target": "nvfp4"}),
        ("nvfp4_rtn_calibrated", {"target": "nvfp4", "act_stats": calib}),
        ("nvfp4_search_mse", {"target": "nvfp4", "scale_search": "mse"}),
        ("nvfp4_search_output", {"target": "nvfp4", "scale_search": "output", "act_samples": acts}),
        ("nvfp4_learned", {"target": "nvfp4", "rounding": "learned", "act_samples": acts, "learned_iters": 200}),
        ("nvfp4_gptq", {"target": "nvfp4", **gq}),
        ("nvfp4_gptq_search_mse", {"target": "nvfp4", **gq, "scale_search": "mse"}),
        ("nvfp4_gptq_search_output", {"target": "nvfp4", **gq, "scale_search": "output"}),
        ("nvfp4_gptq_search_output_damp1", {"target": "nvfp4", **gq, "scale_search": "output", "damp": 1.0}),
        ("nvfp4_budget_default_gptq", {"target": "nvfp4", **gq, "scale_search": "output", "budget_bits": "preset"}),
        ("nvfp4_budget_q5_0_gptq", {"target": "nvfp4", **gq, "scale_search": "output", "budget_bits": "q5_0"}),
        ("nvfp4_budget5.5_search_mse", {"target": "nvfp4", "scale_search": "mse", "budget_bits": 5.5}),
        ("nvfp4_budget_q5_0_search_mse", {"target": "nvfp4", "scale_search": "mse", "budget_bits": "q5_0"}),
    ]


def bits_for_bytes(the_plan, rtn_file: Path, limit: int) -> float:
    """Bits a weight of the quantized layers that keep a file of this plan at <= ``limit`` bytes: the default
    RTN file's bytes outside the quantized weights (header, kept tensors, input scales) are taken as fixed,
    less 4 KiB for a longer header."""
    from quant.budget import stored_bytes
    q = the_plan.quantized()
    fixed = rtn_file.stat().st_size - sum(stored_bytes(d.action, d.shape, 2) for d in q)
    return 8.0 * (limit - fixed - 4096) / sum(d.shape[0] * d.shape[1] for d in q)


def block_sqnr(src_path, path) -> float:
    """Weight SQNR pooled over the source's 2-D block weights (blocks.*.weight)."""
    import torch

    from quant.kernels import fp8 as _fp8
    from quant.kernels import nvfp4 as _nv
    from quant.safetensors_io import SafetensorsFile
    from quant.sources import open_source
    ref = err = 0.0
    with open_source(src_path) as s, SafetensorsFile(path) as f:
        keys = set(f.keys())
        for n in s.keys():
            if not (n.startswith("blocks.") and n.endswith(".weight") and len(s.info(n).shape) == 2):
                continue
            w = s.get(n).double()
            lay = n[: -len(".weight")]
            if f"{lay}.weight_scale_2" in keys:
                d = _nv.dequantize(f.get(n), f.get(f"{lay}.weight_scale"), f.get(f"{lay}.weight_scale_2"), tuple(w.shape))
            elif f"{lay}.weight_scale" in keys:
                d = _fp8.dequantize(f.get(n), f.get(f"{lay}.weight_scale").reshape(()))
            elif f"{lay}.scale_weight" in keys:
                d = _fp8.dequantize(f.get(n), f.get(f"{lay}.scale_weight").reshape(()))
            else:
                d = f.get(n)
            ref += float(w.pow(2).sum())
            err += float((d.double() - w).pow(2).sum())
    return math.inf if err == 0 else 10 * math.log10(ref / err)


def gguf_block_sqnr(src_path, ggufs) -> dict:
    from harness.gguf.ladder import run
    lad = run(src_path, ggufs=ggufs, formats=())
    blocks = [n for n in lad.layers if n.startswith("blocks.")]
    ref = sum(lad.ref2[n] for n in blocks)
    return {c.detail: 10 * math.log10(ref / sum(c.err2[n] for n in blocks)) for c in lad.columns}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-fidelity-ladder-{datetime.date.today()}.json"))
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    ap.add_argument("--only", default="", help="convert only these candidate labels (';'-separated)")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from harness.fixtures.gguf_synth import make_gguf
    from harness.activations.record import record_file
    from harness.render import models
    from quant.convert import convert, make_plan
    from quant.safetensors_io import SafetensorsFile
    from quant.sources import open_source
    work = Path(a.work or tempfile.mkdtemp(prefix="qg-fidelity-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ref_fp32 = models.reference_model()
    timing = {}
    if not (work / "calib.json").exists():
        qg("calibrate", SRC, "--seeds", 11, 12, 13, 14, "--force", "-o", work / "calib.json")
    if not (work / "acts.safetensors").exists():
        with open_source(SRC) as s:
            layers = [n[: -len(".weight")] for n in s.keys()
                      if n.startswith("blocks.") and n.endswith(".weight") and len(s.info(n).shape) == 2]
        record_file(SRC, layers, work / "acts.safetensors", seeds=(11, 12, 13))
    timing["activations_s"] = round(time.perf_counter() - t0, 1)
    with SafetensorsFile(SRC) as f:
        src_t = {n: f.get(n) for n in f.keys()}
    ggufs = []
    for t in GGUF_TYPES:
        p = work / f"gguf_{t}.gguf"
        if not p.exists():
            make_gguf(models.TRAINED_ARCH, p, t, src_dtype="BF16", source_tensors=src_t)
        ggufs.append(p)
    only = {x.strip() for x in a.only.split(";") if x.strip()}
    files, conv = [], {}
    for label, kw in candidates(work):
        if only and label not in only:
            continue
        kw = dict(kw)
        target = kw.pop("target")
        if kw.get("budget_bits") == "q5_0":        # no larger than the GGUF Q5_0 file
            with open_source(SRC) as s:
                kw["budget_bits"] = bits_for_bytes(make_plan(s, None, target), work / "nvfp4_rtn.safetensors",
                                                   (work / "gguf_Q5_0.gguf").stat().st_size)
        out = work / f"{label}.safetensors"
        t1 = time.perf_counter()
        summ = convert(SRC, out, target, force=True, **kw)
        conv[label] = {"seconds": round(time.perf_counter() - t1, 2), "bytes": out.stat().st_size,
                       "by_action": summ.layers, "budget_bits": kw.get("budget_bits"), "rounding": summ.rounding,
                       "budget": summ.budget,
                       "weight_sqnr_db": round(block_sqnr(SRC, out), 3)}
        r = qg("verify", out, "--source", SRC, check=False)
        conv[label]["verify_exit"] = r.returncode
        print(f"{label:<28} {conv[label]['bytes']:>10,} B  weight SQNR {conv[label]['weight_sqnr_db']:6.2f} dB  "
              f"verify {r.returncode}  {conv[label]['seconds']} s", flush=True)
        files.append(out)
    gs = gguf_block_sqnr(SRC, ggufs)
    for p in ggufs:
        conv[p.stem] = {"bytes": p.stat().st_size, "weight_sqnr_db": round(gs[p.name], 3)}
        print(f"{p.stem:<28} {conv[p.stem]['bytes']:>10,} B  weight SQNR {conv[p.stem]['weight_sqnr_db']:6.2f} dB")
    t2 = time.perf_counter()
    g = qg("gate", "--no-verify", "--source", ref_fp32, "--out", work / "gate", *ggufs, *files, check=False)
    timing["gate_s"] = round(time.perf_counter() - t2, 1)
    rec = json.loads((work / "gate" / "gate.json").read_text())
    ssim, wo = defaultdict(list), defaultdict(list)
    for x in rec["renders"]:
        ssim[x.get("candidate")].append(x["ssim"])
        if x.get("weight_only"):
            wo[x.get("candidate")].append(x["weight_only"]["ssim"])
    rows = []
    for p, c in zip([*ggufs, *files], rec["candidates"]):
        k = c["label"]
        em = bool(wo[k])
        w_only = wo[k] if em else ssim[k]
        row = {"file": p.stem, **conv.get(p.stem, {}), "verdict": c.get("verdict"),
               "mean_ssim_weight_only": round(sum(w_only) / len(w_only), 4), "min_ssim_weight_only": round(min(w_only), 4),
               "mean_ssim_emulated": round(sum(ssim[k]) / len(ssim[k]), 4) if em else None,
               "min_ssim_emulated": round(min(ssim[k]), 4) if em else None}
        rows.append(row)
    out = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": SRC.name,
           "gate_exit": g.returncode, "control_ssim": rec.get("control", {}).get("ssim"), "plan": rec.get("plan"),
           "timing": timing, "rows": rows}
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    print(f"\n| file | bytes | weight SQNR (block Linears, pooled) | mean SSIM weight-only | mean SSIM emulated |")
    print("|---|---|---|---|---|")
    for r in rows:
        em = f"{r['mean_ssim_emulated']:.4f} (min {r['min_ssim_emulated']:.4f})" if r["mean_ssim_emulated"] else "--"
        print(f"| {r['file']} | {r.get('bytes', 0):,} | {r.get('weight_sqnr_db', float('nan')):.2f} dB | "
              f"{r['mean_ssim_weight_only']:.4f} (min {r['min_ssim_weight_only']:.4f}) | {em} |")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
