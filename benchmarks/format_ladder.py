"""The format ladder on the trained tiny reference model (issue 24): every format quantgate writes beside GGUF
Q4_0 / Q8_0 of the same weights -- file bytes, whole-model weight SQNR (``quantgate ladder``), and min / mean render
SSIM against the source with activations emulated as each format's native kernel runs them and weight-only
(one ``gate --no-verify`` run in the embedded ComfyUI 0.3.75: formats it cannot load are rendered as their
comfy-kitchen dequantized twin, GGUFs as their gguf-py twin) -> JSON + a plot (bytes vs min SSIM).

    python benchmarks/format_ladder.py [-o benchmarks/results/cpu-format-ladder-DATE.json] [--png PATH] [--work DIR]
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

FORMATS = ("fp8", "nvfp4", "int8", "int8-convrot", "mxfp8", "w4a4-convrot", "w4a8-int8")
GGUFS = ("Q4_0", "Q8_0")


def qg(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *map(str, args)], cwd=ROOT, capture_output=True, text=True)


def plot(rows, png) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.4), dpi=110)
    for r in rows:
        x = r["bytes"] / 1e6
        ax.scatter([x], [r["min_ssim"]], s=28, marker="o" if r["kind"] != "gguf" else "s")
        if r["weight_only_min_ssim"] is not None:
            ax.scatter([x], [r["weight_only_min_ssim"]], s=18, marker="x", color="grey")
        ax.annotate(f"{r['label']} ({r['sqnr_db']:.1f} dB)", (x, r["min_ssim"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("file size (MB)")
    ax.set_ylabel("min render SSIM vs source (o/■: as run, x: weight-only)")
    ax.set_title("trained tiny WAN 2.1 reference model: size vs render fidelity", fontsize=9)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" /
                                                  f"cpu-format-ladder-{datetime.date.today()}.json"))
    ap.add_argument("--png", default=str(ROOT / "benchmarks" / "results" / "format-ladder.png"))
    ap.add_argument("--work", help="working directory (default: a temporary one)")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    from harness.fixtures import gguf_synth
    from harness.gguf import ladder
    from harness.render import models
    from quant.safetensors_io import SafetensorsFile
    work = Path(a.work or tempfile.mkdtemp(prefix="qg-fmtladder-"))
    work.mkdir(parents=True, exist_ok=True)
    src = models.reference_model()
    arch = models.reference_arch()
    files = {}
    for fmt in FORMATS:
        files[fmt] = work / f"{fmt}.safetensors"
        r = qg("convert", src, "-o", files[fmt], "--format", fmt, "--force")
        if r.returncode:
            sys.exit(r.stderr)
    with SafetensorsFile(src) as f:
        tensors = {k: f.get(k) for k in f.keys()}
    for g in GGUFS:
        files[f"gguf {g}"] = gguf_synth.make_gguf(arch, work / f"tiny-{g}.gguf", g, source_tensors=tensors,
                                                  src_dtype="BF16")
    lad = ladder.run(src, [files[f"gguf {g}"] for g in GGUFS], FORMATS)
    sq = {c.label.split(" ")[0] if c.kind != "gguf" else c.label: lad.sqnr(c) for c in lad.columns}
    g = qg("gate", "--no-verify", "--source", src, "--out", work / "gate", *files.values())
    rec = json.loads((work / "gate" / "gate.json").read_text())
    ssim, wo = defaultdict(list), defaultdict(list)
    for x in rec["renders"]:
        ssim[x.get("candidate")].append(x["ssim"])
        if x.get("weight_only"):
            wo[x.get("candidate")].append(x["weight_only"]["ssim"])
    rows = []
    for (name, path), c in zip(files.items(), rec["candidates"]):
        k = c["label"]
        rows.append({"label": name, "kind": "gguf" if name.startswith("gguf") else "format",
                     "bytes": Path(path).stat().st_size, "sqnr_db": round(sq.get(name, float("nan")), 2),
                     "rendered_as": c.get("rendered_as"), "activations": c.get("activations"),
                     "min_ssim": round(min(ssim[k]), 4), "mean_ssim": round(sum(ssim[k]) / len(ssim[k]), 4),
                     "weight_only_min_ssim": round(min(wo[k]), 4) if wo[k] else None,
                     "weight_only_mean_ssim": round(sum(wo[k]) / len(wo[k]), 4) if wo[k] else None,
                     "verdict": c.get("verdict")})
    out = {"what": __doc__.split("\n\n")[0], "date": str(datetime.date.today()), "model": arch,
           "source_bytes": Path(src).stat().st_size, "gate_exit": g.returncode,
           "comfy_version": rec.get("comfy_version") or rec.get("server", {}).get("version"),
           "control_ssim": rec.get("control", {}).get("ssim"), "rows": rows}
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    Path(a.output).write_text(json.dumps(out, indent=1) + "\n")
    plot(rows, a.png)
    print("| format | bytes | weight SQNR dB | min / mean SSIM (as run) | min / mean SSIM weight-only | rendered as |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        w = (f"{r['weight_only_min_ssim']:.4f} / {r['weight_only_mean_ssim']:.4f}"
             if r["weight_only_min_ssim"] is not None else "= as run (no activation quantization)")
        print(f"| `{r['label']}` | {r['bytes'] / 1e6:.2f} MB | {r['sqnr_db']:.1f} | {r['min_ssim']:.4f} / "
              f"{r['mean_ssim']:.4f} | {w} | {r['rendered_as']} |")
    print(f"wrote {a.output} and {a.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
