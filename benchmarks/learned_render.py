"""Render SSIM of learned rounding vs RTN on the trained tiny reference model (one manual run, CPU).

    python benchmarks/learned_render.py --out learned-render.json [--work DIR]

Records a calibration file from the reference model sampling like the render workflow (classes 1-3,
sampler seeds 11-13: not the gate's seeds 1-3), converts fp8-legacy and nvfp4 with RTN, learned on the
recorded activations and learned on the data-free proxy (CPU defaults), and runs the render gate
(default policy) on all six in the embedded ComfyUI. Not a CI test (minutes on a 2-core box).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None):
    from harness.activations.record import record_file
    from harness.render import gate, models
    from harness.render.session import open_session
    from quant.convert import convert, make_plan
    from quant.sources import open_source
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work")
    a = ap.parse_args(argv)
    d = Path(a.work or tempfile.mkdtemp(prefix="learned-render-"))
    d.mkdir(parents=True, exist_ok=True)
    src = models.reference_model()
    with open_source(src) as s:
        layers = [x.layer for x in make_plan(s, None, "nvfp4").quantized()]
    acts = d / "acts.safetensors"
    rows = record_file(src, layers, acts)
    pol = gate.load_policy()
    res = {"calibration_rows": rows, "convert": {}}
    with open_session(work_dir=d / "comfy") as s:
        for fmt in ("fp8-legacy", "nvfp4"):
            k = fmt[:3]
            convert(src, d / f"rtn_{k}.safetensors", fmt, comfy_version=s.version, force=True)
            r = convert(src, d / f"lrec_{k}.safetensors", fmt, comfy_version=s.version, rounding="learned",
                        act_samples=acts, force=True)
            p = convert(src, d / f"lprox_{k}.safetensors", fmt, comfy_version=s.version, rounding="learned",
                        learned_data_free=True, force=True)
            res["convert"][fmt] = {"recorded": r.learned, "proxy": p.learned}
        labels = [f"{p}_{k}" for k in ("fp8", "nvf") for p in ("rtn", "lrec", "lprox")]
        rec = gate.run_gate(s, src, [(x, d / f"{x}.safetensors") for x in labels], policy=pol, work_dir=d)
    c = {x["label"]: x for x in rec["candidates"]}
    res["renders"] = {x: {"min_ssim": c[x]["min_ssim"], "verdict": c[x]["verdict"],
                          "ssims": [r["ssim"] for r in rec["renders"] if r["candidate"] == x]} for x in labels}
    res["plan"] = pol["plan"]
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res["renders"], indent=1))


if __name__ == "__main__":
    main()
