"""Issue 14's numbers in one run: activation policies of the trained tiny reference model, rendered in the
embedded ComfyUI with activation emulation on (``gate --no-verify``).

calibrate (seeds 1-4 x the policy's sizes, held-out seeds 1001-1002) -> convert fp8 / nvfp4 (mixed) with
``--calibration`` -> the same weights with other activation policies (``harness.fixtures.activation_variants``:
weight-derived, none, fpmm) -> one gate run over the seven files -> a JSON summary: per file min / mean SSIM
emulated and weight-only and the verdict, the per-layer SQNR medians of ``calibrate --report``, and the
magnitudes of the held-out activations against fp8 e4m3 at unit scale (what the fp8 file with no activation
policy sees).

    python benchmarks/activation_policies.py [-o benchmarks/results/cpu-activation-policies-DATE.json] [--work DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = [("nvfp4", "calibrated", "nvfp4_cal"), ("nvfp4", "weight-derived", "nvfp4_weight"),
         ("nvfp4", "none (dynamic)", "nvfp4_none"), ("fp8", "calibrated", "fp8_cal"),
         ("fp8", "full_precision_matrix_mult", "fp8_fpmm"), ("fp8", "none (unit scale 1.0)", "fp8_none"),
         ("fp8", "weight-derived", "fp8_weight")]


def qg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def magnitudes(samples_path) -> dict:
    import torch
    from harness.activations.collect import load_samples
    s = load_samples(samples_path)
    x = torch.cat([torch.cat(v).flatten().abs().float() for v in s.values()])
    per = sorted((float(torch.cat(v).abs().amax()), k) for k, v in s.items())
    return {"elements": x.numel(), "above_448": float((x > 448).float().mean()),
            "below_2^-6_subnormal": float((x < 2 ** -6).float().mean()),
            "below_2^-10_zero": float((x < 2 ** -10).float().mean()), "median_abs": float(x.median()),
            "smallest_layer_amax": per[:3], "largest_layer_amax": per[-3:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-activation-policies-{datetime.date.today()}.json"))
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    a = ap.parse_args(argv)
    from harness.fixtures import activation_variants as variants
    from harness.render import models
    work = Path(a.work or tempfile.mkdtemp(prefix="qg-actpol-"))
    work.mkdir(parents=True, exist_ok=True)
    src = models.reference_model()
    r = qg("calibrate", src, "--seeds", 1, 2, 3, 4, "--holdout-seeds", 1001, 1002, "--report", "--force",
           "-o", work / "calib.json")
    if r.returncode:
        sys.exit(r.stderr)
    for fmt in ("fp8", "nvfp4"):
        r = qg("convert", src, "-o", work / f"{fmt}_cal.safetensors", "--format", fmt, "--act-stats",
               work / "calib.json", "--force")
        if r.returncode:
            sys.exit(r.stderr)
        variants.make(work / f"{fmt}_cal.safetensors", work / f"{fmt}_none.safetensors", "none")
        variants.make(work / f"{fmt}_cal.safetensors", work / f"{fmt}_weight.safetensors", "weight-derived")
    variants.make(work / "fp8_cal.safetensors", work / "fp8_fpmm.safetensors", "fpmm")
    files = [work / f"{stem}.safetensors" for _, _, stem in CASES]
    g = qg("gate", "--no-verify", "--source", src, "--out", work / "gate", *files)
    rec = json.loads((work / "gate" / "gate.json").read_text())
    ssim, wo = defaultdict(list), defaultdict(list)
    for x in rec["renders"]:
        ssim[x.get("candidate")].append(x["ssim"])
        if x.get("weight_only"):
            wo[x.get("candidate")].append(x["weight_only"]["ssim"])
    rows = []
    for (fmt, policy, stem), c in zip(CASES, rec["candidates"]):
        k = c["label"]
        rows.append({"format": fmt, "activation_policy": policy, "file": stem,
                     "emulated": bool(wo[k]), "min_ssim": round(min(ssim[k]), 4),
                     "mean_ssim": round(sum(ssim[k]) / len(ssim[k]), 4),
                     "weight_only_min_ssim": round(min(wo[k]), 4) if wo[k] else None,
                     "verdict": c.get("verdict"), "reasons": c.get("reasons", [])})
    cal = json.loads((work / "calib.json").read_text())
    out = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": models.reference_arch(),
           "gate_exit": g.returncode, "control_ssim": rec.get("control", {}).get("ssim"), "cases": rows,
           "sqnr_median_db": {f: v["median_db"] for f, v in cal.get("sqnr", {}).get("formats", {}).items()},
           "heldout_activations": magnitudes(work / "calib.samples.safetensors")}
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    for r in rows:
        print(f"{r['format']:<6} {r['activation_policy']:<28} min {r['min_ssim']:.4f} (weight-only "
              f"{r['weight_only_min_ssim'] if r['weight_only_min_ssim'] is not None else '-'}) {r['verdict']}")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
