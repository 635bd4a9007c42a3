"""Render noise of GOOD files against their reference conversion, on the trained tiny reference model
(issue 21): the numbers the render gate's relative margins (policy.toml ``[reference]``) are set from.

    python benchmarks/render_noise.py [-o benchmarks/results/cpu-render-noise-DATE.json] [--work DIR]

Good files (nothing planted): the demo's three (fp8-legacy, fp8, nvfp4 for the embedded ComfyUI),
calibrated fp8 / NVFP4 (``calibrate`` on sampler seeds 11-14: not the gate's), margin 1.2, percentile
99.99, fp8 with ``full_precision_matrix_mult`` kept, learned rounding on recorded activations (fp8-legacy,
NVFP4), an NVFP4 file with a Q8_0-derived preset (every Linear fp8) and the calibrated NVFP4 file with its
global scale x2 and block scales /2 (exactly equivalent). One gate run (embedded ComfyUI 0.3.75, CPU,
activation emulation on); every candidate is rendered beside its reference conversion (round-to-nearest,
same layers, same activation path with dynamic scales). The committed measurement
(``cpu-render-noise-2026-12-07.json``) came from ``benchmarks/planted_render.py --noise-output``: the same
good files in one gate run with the planted files (not read here), seeds 1-2 x 64x64, 96x64 -- 150 renders,
39 min on the shared 2-core box at load 10-13 (a 3 x 2 plan did not fit the time).

Per good file the JSON holds every render's SSIM (candidate, reference; weight-only too) and the gate's
statistic -- mean dissimilarity d = 1 - SSIM of candidate and reference -- on every subset of its renders
(its spread is the render noise; a single render is what the CI test judges on), and ``statistics``: the
noise by format, size, seed and file, and the margins of policy.toml ``[reference]`` by the rule below.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SEEDS = [1, 2, 3]
SIZES = [[64, 64]]
CAL_SEEDS = [11, 12, 13, 14]


def qg(*args) -> None:
    r = subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"quantgate {' '.join(map(str, args[:2]))}: {r.stderr[-2000:]}")


def good_files(src, work: Path, comfy_version: str, log) -> dict[str, Path]:
    from harness.fixtures.gguf_synth import make_gguf
    from harness.fixtures.planted import quality_defects as qd
    from harness.activations.record import record_file
    from quant.convert import convert, make_plan
    from quant.sources import open_source
    cal = work / "calib.json"
    if not cal.exists():
        log("calibrate (seeds 11-14)")
        qg("calibrate", src, "--seeds", *CAL_SEEDS, "-o", cal, "--force")
    acts = work / "acts.safetensors"
    if not acts.exists():
        with open_source(src) as s:
            layers = [x.layer for x in make_plan(s, None, "nvfp4").quantized()]
        record_file(src, layers, acts)
    gg = work / "tiny-Q8_0.gguf"
    if not gg.exists():
        make_gguf("wan21-t2v-tiny", gg, "Q8_0", src_dtype="BF16")
    f: dict[str, Path] = {}

    def c(label, fmt, **kw):
        p = work / f"{label}.safetensors"
        if not p.exists():
            log(f"convert {label}")
            convert(src, p, fmt, force=True, **kw)
        f[label] = p
    for fmt in ("fp8-legacy", "fp8", "nvfp4"):
        c(f"demo_{fmt}", fmt, comfy_version=comfy_version)
    c("fp8_cal", "fp8", act_stats=cal)
    c("fp8_cal_fpmm", "fp8", act_stats=cal, keep_fpmm=True)
    c("nvfp4_cal", "nvfp4", act_stats=cal)
    c("nvfp4_cal_m1.2", "nvfp4", act_stats=cal, margin=1.2)
    c("fp8-legacy_learned", "fp8-legacy", comfy_version=comfy_version, rounding="learned", act_samples=acts)
    c("nvfp4_learned_cal", "nvfp4", rounding="learned", act_samples=acts, act_stats=cal)
    c("nvfp4_q8_0_preset", "nvfp4", preset_from_gguf=gg)
    p = work / "nvfp4_cal_global_x2.safetensors"
    if not p.exists():
        qd.global_scale_up(f["nvfp4_cal"], p, 1)
    f["nvfp4_cal_global_x2"] = p
    return f


def subsets(rows_c, rows_r):
    """The gate's statistic on every subset of the renders: (mean d candidate, mean d reference) per subset."""
    cm = {(r["seed"], r["width"], r["height"]): 1 - r["ssim"] for r in rows_c}
    rm = {(r["seed"], r["width"], r["height"]): 1 - r["ssim"] for r in rows_r}
    keys = [k for k in cm if k in rm]
    out = []
    for n in range(1, len(keys) + 1):
        for ks in itertools.combinations(keys, n):
            out.append((sum(cm[k] for k in ks) / len(ks), sum(rm[k] for k in ks) / len(ks)))
    return out


# ---- the margins (policy.toml [reference]) from the good files' renders ----------------------------
# The rule, fixed before any planted file was judged with it (the planted files are not read here):
#  * slack s: the absolute render noise where a format's dissimilarity is tiny (fp8 / fp8-legacy files and
#    their references, d ~ 0.001-0.004, where a ratio is ill-conditioned): HEADROOM x the largest |d_c - d_r|
#    of a single render of such a good file, at least SLACK_MIN, rounded up to 0.0005;
#  * ratio r: HEADROOM x the largest (d_c - s) / d_r of a single render (one seed, one size: the smallest
#    plan the gate runs) of any good file, at least RATIO_MIN, rounded up to 0.05.
# Every good render then sits below its limit with HEADROOM to spare on the ratio (and the mean over any
# subset of renders too, since the limit is linear in d_r).
HEADROOM = 1.5
SLACK_MIN = 0.002
RATIO_MIN = 1.25
LOW_D = 0.005      # a reference this close to the source (mean d) counts as "tiny dissimilarity"


def _up(x: float, step: float) -> float:
    import math
    return round(math.ceil(x / step - 1e-9) * step, 6)


def statistics(files: dict) -> dict:
    """Noise of the good files by format, seed and size, and the margins the rule above gives."""
    per = []           # one row per (good file, render)
    for lab, v in files.items():
        if not v.get("reference_renders"):
            continue
        ref = {(x["seed"], tuple(x["size"])): x["ssim"] for x in v["reference_renders"]}
        for x in v["renders"]:
            k = (x["seed"], tuple(x["size"]))
            if k in ref:
                per.append({"file": lab, "format": v["format"], "seed": x["seed"], "size": list(k[1]),
                            "d_c": 1 - x["ssim"], "d_r": 1 - ref[k], "low_d": v["reference_mean_d"] < LOW_D})
    if not per:
        return {"rows": 0}
    low = [abs(r["d_c"] - r["d_r"]) for r in per if r["low_d"]]
    slack = _up(max(SLACK_MIN, HEADROOM * max(low, default=0.0)), 0.0005)
    need = max((r["d_c"] - slack) / r["d_r"] for r in per if r["d_r"] > 0)
    ratio = _up(max(RATIO_MIN, HEADROOM * need), 0.05)

    def group(key):
        g = {}
        for r in per:
            g.setdefault(str(key(r)), []).append(r)
        return {k: {"renders": len(v), "d_c": [round(min(x["d_c"] for x in v), 5), round(max(x["d_c"] for x in v), 5)],
                    "d_r": [round(min(x["d_r"] for x in v), 5), round(max(x["d_r"] for x in v), 5)],
                    "ratio_d_c/d_r": [round(min(x["d_c"] / x["d_r"] for x in v), 3),
                                      round(max(x["d_c"] / x["d_r"] for x in v), 3)],
                    "excess_d_c-d_r": [round(min(x["d_c"] - x["d_r"] for x in v), 5),
                                       round(max(x["d_c"] - x["d_r"] for x in v), 5)]}
                for k, v in sorted(g.items())}
    headroom = {}
    for lab, v in files.items():
        rr = [r for r in per if r["file"] == lab]
        if rr:
            worst = max(rr, key=lambda r: r["d_c"] - (ratio * r["d_r"] + slack))
            headroom[lab] = {"worst_single_render": {"seed": worst["seed"], "size": worst["size"],
                                                     "d_c": round(worst["d_c"], 5),
                                                     "limit": round(ratio * worst["d_r"] + slack, 5)},
                             "plan_mean_d": round(v["mean_d"], 5),
                             "plan_limit": round(ratio * v["reference_mean_d"] + slack, 5)}
    return {"rows": len(per), "by_format": group(lambda r: r["format"]), "by_size": group(lambda r: r["size"]),
            "by_seed": group(lambda r: r["seed"]), "by_file": group(lambda r: r["file"]),
            "rule": {"headroom": HEADROOM, "slack_min": SLACK_MIN, "ratio_min": RATIO_MIN, "low_d": LOW_D,
                     "max_abs_excess_low_d": round(max(low, default=0.0), 6),
                     "max_needed_ratio_at_slack": round(need, 4)},
            "margins": {"ratio": ratio, "slack": slack}, "good_files_vs_limit": headroom}


def summarize(rec: dict, secs: float, labels=None, note: str | None = None) -> dict:
    """The noise statistics of the good files in a gate record (``labels``: which candidates are good
    files; default all). Planted files rendered in the same run are NOT read here."""
    from harness.render import models
    seeds = rec["seeds"]
    sizes = rec["sizes"]
    rows = {}
    for r in rec["renders"]:
        if r.get("candidate"):
            rows.setdefault(r["candidate"], []).append(r)
    refs = {r["label"]: r for r in rec["references"]}
    out_files = {}
    for c in rec["candidates"]:
        if labels is not None and c["label"] not in labels:
            continue
        lab, ref = c["label"], (c.get("reference") or {}).get("label")
        rc, rr = rows.get(lab, []), rows.get(ref, [])
        sub = subsets(rc, rr)
        out_files[lab] = {
            "format": c["format"], "rendered_as": c["rendered_as"], "activations": c["activations"],
            "reference": ref, "absolute_verdict_reasons": [x for x in c["reasons"] if "reference" not in x],
            "renders": [{"seed": x["seed"], "size": [x["width"], x["height"]], "ssim": x["ssim"],
                         "weight_only_ssim": (x.get("weight_only") or {}).get("ssim")} for x in rc],
            "min_ssim": min(x["ssim"] for x in rc), "mean_d": sum(1 - x["ssim"] for x in rc) / len(rc),
            "reference_mean_d": sum(1 - x["ssim"] for x in rr) / len(rr) if rr else None,
            "reference_renders": [{"seed": x["seed"], "size": [x["width"], x["height"]], "ssim": x["ssim"]}
                                  for x in rr],
            "plan_subsets": {"n": len(sub),
                             "max_d": max(x[0] for x in sub), "max_ratio": max(x[0] / x[1] for x in sub),
                             "max_excess_over_reference": max(x[0] - x[1] for x in sub),
                             "min_excess_over_reference": min(x[0] - x[1] for x in sub)} if sub else None}
    out_refs = {lab: {"format": r["format"], "used_by": r["used_by"], "activations": r["activations"],
                      "renders": [{"seed": x["seed"], "size": [x["width"], x["height"]], "ssim": x["ssim"],
                                   "weight_only_ssim": (x.get("weight_only") or {}).get("ssim")}
                                  for x in rows.get(lab, [])]} for lab, r in refs.items()
                if any(u in out_files for u in r["used_by"])}
    out = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": models.reference_arch(),
           "comfyui": rec["comfyui"]["version"], "seeds": seeds, "sizes": sizes, "calibration_seeds": CAL_SEEDS,
           "plan_subsets": "every non-empty subset of the renders (single renders: what the CI test judges on)",
           "gate_seconds": round(secs, 1), "renders": rec["timings"]["renders"],
           "control_ssim": rec["control"]["ssim"], "good_files": out_files, "references": out_refs}
    if note:
        out["note"] = note
    out["statistics"] = statistics(out_files)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-render-noise-{datetime.date.today()}.json"))
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from harness.comfy.server import comfy_version, embedded_source
    from harness.render import gate, models
    from harness.render.session import open_session

    def log(m):
        print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)
    work = Path(a.work or tempfile.mkdtemp(prefix="qg-render-noise-"))
    work.mkdir(parents=True, exist_ok=True)
    src = models.reference_model()
    files = good_files(src, work, comfy_version(embedded_source()), log)
    pol = gate.load_policy()
    pol["plan"]["seeds"], pol["plan"]["sizes"] = SEEDS, SIZES
    t0 = time.monotonic()
    with open_session(work_dir=work / "comfy", log=log) as s:
        rec = gate.run_gate(s, src, list(files.items()), policy=pol, work_dir=work, log=log)
    secs = time.monotonic() - t0
    out = summarize(rec, secs)
    out_files = out["good_files"]
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    for lab, v in out_files.items():
        ps = v["plan_subsets"]
        print(f"{lab:<22} min {v['min_ssim']:.4f} mean d {v['mean_d']:.4f} ref d {v['reference_mean_d']:.4f}  "
              f"subsets: max ratio {ps['max_ratio']:.2f} max excess {ps['max_excess_over_reference']:+.4f}")
    print(f"wrote {a.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
