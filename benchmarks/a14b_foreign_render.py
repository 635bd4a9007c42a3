"""Issue 23: the A14B defect "one expert's input_scale taken from the other" through the real render gate
(embedded ComfyUI, CPU, the shipped A14B workflow, activations emulated, each slot held to its own
reference conversion), once per conditioning.

Candidates, all fp8 with static input scales from statistics JSONs recorded in process on the tiny pair
(``a14b_tiny.activation_amax``: classes 1-3, seeds 1-3, both sizes): each expert with its OWN statistics,
and the planted files -- the high-noise expert with the LOW's statistics (high slot) and the low-noise
expert with the HIGH's (low slot), made by ``convert --act-stats OTHER --allow-foreign-calibration``.
Per candidate: the gate's verdict (with verify: the format gate's ``calibration.foreign`` rule, and the
gate's own check of the file's calibration provenance against its slot) and ``render_alone``: what the
renders say by themselves (min SSIM vs the floor, mean 1-SSIM vs the slot's reference conversion).

    python benchmarks/a14b_foreign_render.py --work DIR -o benchmarks/results/cpu-a14b-foreign-render-2026-12-07.json

(with the ./qg environment's Python, ~/.cache/quantgate/venv-<hash>/bin/python.)
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


def files(work: Path, comfy_version: str, log=print) -> tuple[dict, list]:
    """(slot -> source, gate candidates (label, path, slot))."""
    from harness.fixtures.planted import family_defects as fd
    from harness.train import a14b_tiny, registry
    from quant.convert import convert
    srcs = registry.sources(a14b_tiny.NAME)
    amax = a14b_tiny.activation_amax(a14b_tiny.load_model(srcs["model"]), a14b_tiny.load_model(srcs["model_low"]))
    slot = {"high": "model", "low": "model_low"}
    stats = {e: fd.a14b_statistics(srcs[slot[e]], amax[e], work / f"stats-{e}.json") for e in ("high", "low")}
    cands = []
    for e in ("high", "low"):
        own = work / f"{e}_fp8_cal.safetensors"
        convert(srcs[slot[e]], own, "fp8", force=True, act_stats=str(stats[e]), comfy_version=comfy_version)
        cands.append((f"fp8 {e} (own statistics)", own, slot[e]))
    for e, other in (("high", "low"), ("low", "high")):
        bad = fd.a14b_foreign_input_scales(srcs[slot[e]], work / f"{e}_fp8_PLANTED_{other}_stats.safetensors",
                                           stats[other], comfy_version=comfy_version)
        cands.append((f"PLANTED {e} with {other}'s input_scale", bad, slot[e]))
    log(f"{len(cands)} candidates in {work}")
    return srcs, cands


def _row(c: dict) -> dict:
    ref = c.get("reference") or {}
    render_ok = (c["min_ssim"] is not None and c["min_ssim"] >= c["threshold"]
                 and ref.get("pass", True) is not False)
    return {"slot": c["slot"], "verdict": c["verdict"], "render_alone": "pass" if render_ok else "fail",
            "min_ssim": c["min_ssim"], "threshold": c["threshold"],
            "verify": (c.get("verify") or {}).get("summary"),
            "reference": {k: ref.get(k) for k in ("available", "label", "mean_dissimilarity",
                                                   "reference_mean_dissimilarity", "limit", "excess", "pass", "why")},
            "reasons": c["reasons"]}


def main(argv=None) -> int:
    from harness.comfy.server import comfy_version, embedded_source
    from harness.render.gate import load_policy, run_gate
    from harness.render.session import open_session
    from harness.render.workflow import Workflow
    from harness.verify.record import run_verify
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--cond-seeds", type=int, nargs="+", default=[1, 3],
                    help="conditionings (= classes of the tiny pair) to run the gate with (policy: 1)")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    srcs, cands = files(a.work, comfy_version(embedded_source()))
    runs = {}
    with open_session(log=lambda *_: None) as s:
        for cs in a.cond_seeds:
            pol = load_policy()
            pol["plan"]["cond_seed"] = cs
            t = time.monotonic()
            rec = run_gate(s, srcs["model"], cands, policy=pol, work_dir=a.work / f"gate-{cs}",
                           workflow=Workflow.from_arg("wan22_a14b_t2v_smoke", None),
                           companions={"model_low": srcs["model_low"]}, verify_fn=run_verify)
            key = f"cond_seed {cs}"
            runs[key] = {"seconds": round(time.monotonic() - t, 1), "control": rec["control"]["ssim"],
                         "candidates": {c["label"]: _row(c) for c in rec["candidates"]}}
            print(key, json.dumps({k: (v["verdict"], v["render_alone"], v["min_ssim"],
                                       v["reference"]["mean_dissimilarity"], v["reference"]["limit"])
                                   for k, v in runs[key]["candidates"].items()}), flush=True)
    out = {"what": __doc__.split("\n\n")[0], "seconds": round(time.monotonic() - t0, 1),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "plan": "policy.toml's: seeds 1-3 x 64x64, 96x64, 6 steps; cond_seed as named", "runs": runs}
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
