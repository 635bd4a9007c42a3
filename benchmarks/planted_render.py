"""Issue 21's closing numbers: the render gate ALONE (``gate --no-verify``) on planted quality defects of the
trained tiny reference model, before (absolute SSIM floor only, what the gate did) and after (plus the
reference conversion) -- one gate run (default: the policy's plan, 3 seeds x 64x64, 96x64; ``--seeds`` /
``--size`` narrow it on a busy box; embedded ComfyUI 0.3.75, CPU, activation emulation on).

    python benchmarks/planted_render.py --work DIR [-o benchmarks/results/cpu-planted-render-DATE.json]
    python benchmarks/planted_render.py --work DIR --rejudge [-o ...]   # re-apply policy.toml's [reference]

The good base files (demo conversions, calibrated conversions on seeds 11-14) are taken from
``benchmarks/render_noise.py``'s work directory when present (``--work`` the same DIR), else made here. The
gate record and the rendered pixels are kept in DIR (``planted-gate.json``, ``planted-images.npz``) so the
verdicts can be re-judged with other margins without rendering again; ``--rejudge`` also writes
``DIR/report/report.html`` (the report page: candidates against their reference conversion).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# defect class -> (label, factory, base file, argument); severities chosen from the wording
PLANTED = {
    "activation scales too small": [("nvfp4 input x1/2", "scale_inputs", "nvfp4_cal", 1 / 2),
                                    ("nvfp4 input x1/16", "scale_inputs", "nvfp4_cal", 1 / 16),
                                    ("fp8 input x1/2", "scale_inputs", "fp8_cal", 1 / 2),
                                    ("fp8 input x1/16", "scale_inputs", "fp8_cal", 1 / 16)],
    "nvfp4 block scales shifted down": [("nvfp4 block -4 codes", "shift_block_scales", "demo_nvfp4", 4),
                                        ("nvfp4 block -8 codes", "shift_block_scales", "demo_nvfp4", 8)],
    "nvfp4 global scale up, block scales underflow": [("nvfp4 global x2^8", "global_scale_up", "demo_nvfp4", 8),
                                                      ("nvfp4 global x2^12", "global_scale_up", "demo_nvfp4", 12)],
    "fp8 per-tensor scale far too large": [("fp8 scale x2^10", "coarse_fp8", "demo_fp8", 2 ** 10),
                                           ("fp8 scale x2^14", "coarse_fp8", "demo_fp8", 2 ** 14)],
}
GOOD = [("nvfp4 calibrated (good)", "nvfp4_cal")]


def build(work: Path, log) -> list[tuple[str, Path]]:
    from benchmarks.render_noise import good_files
    from harness.comfy.server import comfy_version, embedded_source
    from harness.fixtures.planted import quality_defects as qd
    from harness.render import models
    base = good_files(models.reference_model(), work, comfy_version(embedded_source()), log)
    out = [(lab, base[k]) for lab, k in GOOD]
    for items in PLANTED.values():
        for lab, fn, b, arg in items:
            p = work / ("planted-" + lab.replace(" ", "_").replace("/", "-").replace("^", "") + ".safetensors")
            if not p.exists():
                getattr(qd, fn)(base[b], p, arg)
            out.append((lab, p))
    return out


def render(work: Path, log, seeds=None, sizes=None) -> None:
    import numpy as np
    import torch
    torch.set_num_threads(1)
    from harness.render import gate, models
    from harness.render.report import write_gate_json
    from harness.render.session import open_session
    cands = build(work, log)
    t0 = time.monotonic()
    pol = gate.load_policy()
    if seeds:
        pol["plan"]["seeds"] = seeds
    if sizes:
        pol["plan"]["sizes"] = sizes
    with open_session(work_dir=work / "comfy-planted", log=log) as s:
        rec = gate.run_gate(s, models.reference_model(), cands, policy=pol, work_dir=work, log=log)
    rec["timings"]["wall_s"] = round(time.monotonic() - t0, 1)
    imgs = rec["_images"]
    arrays = {}
    for (seed, w, h), a in imgs["baseline"].items():
        arrays[f"baseline|{seed}|{w}|{h}"] = a
    for lab, d in imgs["candidates"].items():
        for (seed, w, h), a in d.items():
            arrays[f"cand|{lab}|{seed}|{w}|{h}"] = a
    for lab, d in (imgs.get("weight_only") or {}).items():
        for (seed, w, h), a in d.items():
            arrays[f"wo|{lab}|{seed}|{w}|{h}"] = a
    if imgs.get("control") is not None:
        s0, cs, w, h, a = imgs["control"]
        arrays[f"control|{s0}|{cs}|{w}|{h}"] = a
    np.savez_compressed(work / "planted-images.npz", **arrays)
    write_gate_json(rec, work / "planted-gate.json")


def _load(work: Path) -> dict:
    import numpy as np
    rec = json.loads((work / "planted-gate.json").read_text())
    imgs = {"baseline": {}, "candidates": {}, "weight_only": {}, "control": None}
    with np.load(work / "planted-images.npz") as z:
        for k in z.files:
            parts = k.split("|")
            if parts[0] == "baseline":
                imgs["baseline"][tuple(int(x) for x in parts[1:])] = z[k]
            elif parts[0] in ("cand", "wo"):
                d = imgs["candidates" if parts[0] == "cand" else "weight_only"].setdefault(parts[1], {})
                d[tuple(int(x) for x in parts[2:])] = z[k]
            else:
                s0, cs, w, h = (int(x) for x in parts[1:])
                imgs["control"] = (s0, cs, w, h, z[k])
    rec["_images"] = imgs
    return rec


def rejudge(work: Path, out: Path) -> dict:
    """Re-apply the current policy's [reference] margins to the stored renders; before = absolute floor only."""
    from harness.render import gate, reference
    from harness.render.report import write_report
    rec = _load(work)
    pol = gate.load_policy()["reference"]
    rows = {}
    for r in rec["renders"]:
        if r.get("candidate"):
            rows.setdefault(r["candidate"], []).append(r)
    summary = {}
    for c in rec["candidates"]:
        before = [x for x in c["reasons"] if "reference conversion" not in x]
        ref = c.get("reference") or {}
        if ref.get("available"):
            j = reference.judge(rows[c["label"]], rows[ref["label"]], pol)
            j.update({k: ref[k] for k in ("label", "path", "sha256", "emulated") if k in ref})
            c["reference"] = j
            reasons = before + ([] if j["pass"] else [
                f"clearly below its reference conversion ({ref['label']}): mean 1-SSIM {j['mean_dissimilarity']:.4f} vs "
                f"the reference's {j['reference_mean_dissimilarity']:.4f} (limit {j['ratio']:g} x + {j['slack']:g} = "
                f"{j['limit']:.4f})"])
        else:
            reasons = before
        c["reasons"], c["verdict"] = reasons, ("fail" if reasons else "pass")
        summary[c["label"]] = {"before": "fail" if before else "pass", "after": c["verdict"],
                               "min_ssim": c["min_ssim"], "threshold": c["threshold"],
                               "weight_only_min_ssim": (c.get("activations") or {}).get("min_ssim_weight_only"),
                               "mean_d": ref and c["reference"].get("mean_dissimilarity"),
                               "reference_mean_d": ref and c["reference"].get("reference_mean_dissimilarity"),
                               "limit": ref and c["reference"].get("limit")}
    rec["verdict"] = "pass" if all(c["verdict"] == "pass" for c in rec["candidates"]) else "fail"
    rp, _ = write_report(rec, work / "report", title="quantgate render gate: planted quality defects (issue 21)")
    classes = {cls: {lab: summary[lab] for lab, *_ in items} for cls, items in PLANTED.items()}
    res = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "comfyui": rec["comfyui"]["version"],
           "plan": {"seeds": rec["seeds"], "sizes": rec["sizes"]}, "reference_policy": pol,
           "renders": rec["timings"].get("renders"), "gate_wall_s": rec["timings"].get("wall_s"),
           "control_ssim": rec["control"]["ssim"], "planted": classes,
           "good": {lab: summary[lab] for lab, _ in GOOD}, "report": str(rp)}
    out.write_text(json.dumps(res, indent=1) + "\n")
    for cls, d in classes.items():
        for lab, v in d.items():
            print(f"{cls:<46} {lab:<22} before {v['before']:<4} after {v['after']:<4} min SSIM {v['min_ssim']:.4f} "
                  f"d {v['mean_d']:.4f} ref {v['reference_mean_d']:.4f} limit {v['limit']:.4f}")
    print(f"report: {rp}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True)
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-planted-render-{datetime.date.today()}.json"))
    ap.add_argument("--rejudge", action="store_true", help="only re-judge the stored renders with policy.toml")
    ap.add_argument("--seeds", type=int, nargs="+", help="render seeds (default: the policy's)")
    ap.add_argument("--size", action="append", help="WxH (repeatable; default: the policy's sizes)")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)

    def log(m):
        print(f"[{time.strftime('%H:%M:%S')}] {m}", file=sys.stderr, flush=True)
    if not a.rejudge:
        render(work, log, a.seeds, [[int(v) for v in x.split("x")] for x in a.size] if a.size else None)
    rejudge(work, Path(a.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
