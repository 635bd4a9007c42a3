"""Cross-check of quantgate's bytes against Comfy-Org's comfy-quants (issue 24, item 7) where the formats coincide:
MXFP8 (``formats/mxfp8_blocked.quantize_mxfp8_block``) and INT8 per row with and without ConvRot
(``backends/int8_w8a8_model_export._quantize_int8_per_row``), on every 2-D Linear weight of the trained reference
model. comfy-quants is not on PyPI: point ``--comfy-quants-src`` at its ``src/`` (e.g. from
``git archive`` of github.com/Comfy-Org/comfy-quants). Writes a JSON of per-format agreement (identical bytes,
code differences, scale differences).

    python benchmarks/comfy_quants_crosscheck.py --comfy-quants-src PATH [-o benchmarks/results/...json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--comfy-quants-src", required=True)
    ap.add_argument("--comfy-quants-commit", help="the commit the src/ came from (recorded in the JSON)")
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-comfy-quants-crosscheck-{datetime.date.today()}.json"))
    a = ap.parse_args(argv)
    sys.path.insert(0, a.comfy_quants_src)
    import torch
    from comfy_quants.backends.int8_w8a8_model_export import _quantize_int8_per_row
    from comfy_quants.formats.mxfp8_blocked import quantize_mxfp8_block
    from harness.render import models
    from quant import formats
    from quant.safetensors_io import SafetensorsFile
    torch.set_num_threads(1)
    src = models.reference_model()
    rows = {"int8": [], "int8-convrot": [], "mxfp8": []}
    with SafetensorsFile(src) as f:
        weights = {k: f.get(k) for k in f.keys() if k.endswith(".weight") and len(f.info(k).shape) == 2}
    for name, w in weights.items():
        n, k = w.shape
        cases = {"int8": lambda: _quantize_int8_per_row(w, convrot=False, group_size=256)[:2],
                 "mxfp8": (lambda: quantize_mxfp8_block(w)) if k % 32 == 0 else None}
        g = formats.get("int8-convrot").conf_extra(n, k).get("convrot_groupsize") if k % 16 == 0 else None
        if g is not None:
            cases["int8-convrot"] = lambda: _quantize_int8_per_row(w, convrot=True, group_size=g)[:2]
        for fmt, theirs_fn in cases.items():
            if theirs_fn is None:
                continue
            ours = formats.get(fmt).quantize(w)
            tq, ts = theirs_fn()
            oq, os_ = ours["weight"], ours["weight_scale"]
            if fmt == "mxfp8":
                oq, os_, tq, ts = (oq.view(torch.uint8), os_.view(torch.uint8), tq.view(torch.uint8),
                                   ts.view(torch.uint8))
                dq = (formats.get("mxfp8").dequantize(ours, (n, k)) - formats.get("mxfp8").dequantize(
                    {"weight": tq.view(torch.float8_e4m3fn), "weight_scale": ts}, (n, k))).abs().max()
                rows[fmt].append({"tensor": name, "shape": [n, k], "codes_equal": bool(torch.equal(oq, tq)),
                                  "scales_equal": bool(torch.equal(os_, ts)), "max_abs_decoded_diff": float(dq)})
            else:
                cd = (oq.to(torch.int16) - tq.to(torch.int16)).abs()
                rel = ((os_.float().reshape(-1) - ts.float().reshape(-1)).abs() / ts.float().reshape(-1)).max()
                rows[fmt].append({"tensor": name, "shape": [n, k], "group": g if fmt == "int8-convrot" else None,
                                  "codes_equal": bool(torch.equal(oq, tq)),
                                  "codes_differing": int((cd > 0).sum()), "codes_total": oq.numel(),
                                  "max_code_diff": int(cd.max()), "scales_equal": bool(torch.equal(os_.reshape(-1), ts.reshape(-1))),
                                  "max_scale_rel_diff": float(rel)})
    summary = {}
    for fmt, rs in rows.items():
        s = {"tensors": len(rs), "codes_identical_tensors": sum(r["codes_equal"] for r in rs),
             "scales_identical_tensors": sum(r["scales_equal"] for r in rs)}
        if fmt != "mxfp8" and rs:
            s["codes_differing"] = sum(r["codes_differing"] for r in rs)
            s["codes_total"] = sum(r["codes_total"] for r in rs)
            s["max_code_diff"] = max(r["max_code_diff"] for r in rs)
            s["max_scale_rel_diff"] = max(r["max_scale_rel_diff"] for r in rs)
        summary[fmt] = s
    rev = a.comfy_quants_commit or subprocess.run(["git", "-C", str(Path(a.comfy_quants_src).parent), "rev-parse",
                                                   "HEAD"], capture_output=True, text=True).stdout.strip() or None
    out = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": str(Path(src).name),
           "comfy_quants_commit": rev, "summary": summary, "tensors": rows}
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
