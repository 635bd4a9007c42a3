"""Golden renders of the embedded model: same checkpoint + same code -> pixel-identical renders.

``golden/render-wan21-t2v-thin.json`` holds, per render, the sha256 of the decoded pixels and an 8x8
grey fingerprint (no PNGs are committed), plus the sha256s of the thin model and the random VAE,
so a mismatch says whether the model generator, the workflow or the render path changed.

Regenerate (after an intended change): ``python -m harness.render.fingerprints --update``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quant.resources import data_path

from . import models, score
from ..verify.record import sha256_file
from .workflow import Workflow

GOLDEN = data_path("golden", "render-wan21-t2v-thin.json")
PLAN = {"seeds": [7, 8], "sizes": [[64, 64], [96, 64]],
        "settings": {"steps": 4, "cfg": 1.0, "sampler": "euler", "scheduler": "simple", "cond_seed": 1, "neg_seed": 2}}


def render_golden(session) -> dict:
    src = models.reference_model()
    vae = models.reference_vae(session.server.root, python=session.server.python) if session.server is not None else None
    wf = Workflow.from_arg(None, None)
    settings = dict(PLAN["settings"], vae=session.vae())
    name = session.model(src)
    out = []
    for seed in PLAN["seeds"]:
        for w, h in PLAN["sizes"]:
            res = session.client.run(wf.build(name, seed, w, h, settings, "golden"), timeout=120)
            img = res.images[0][1]
            out.append({"seed": seed, "width": w, "height": h, "pixels_sha256": score.pixel_sha256(img),
                        "fingerprint8": score.fingerprint(img)})
    return {"model": models.reference_arch(), "model_sha256": sha256_file(src),
            "vae_sha256": sha256_file(vae) if vae else None, "comfyui_version": session.version,
            "pytorch_version": session.stats.get("system", {}).get("pytorch_version"),
            "plan": PLAN, "renders": out}


def compare(current: dict, stored: dict) -> list[str]:
    """Human-readable differences ([] = identical)."""
    probs = []
    for k in ("model_sha256", "vae_sha256", "comfyui_version"):
        if current.get(k) != stored.get(k):
            probs.append(f"{k} changed: {stored.get(k)} -> {current.get(k)}")
    if current.get("plan") != stored.get("plan"):
        probs.append("the golden plan changed")
    old = {(r["seed"], r["width"], r["height"]): r for r in stored.get("renders", [])}
    for r in current["renders"]:
        o = old.get((r["seed"], r["width"], r["height"]))
        if o is None:
            probs.append(f"no golden render for seed {r['seed']} {r['width']}x{r['height']}")
        elif o["pixels_sha256"] != r["pixels_sha256"]:
            d = max(abs(a - b) for a, b in zip(o["fingerprint8"], r["fingerprint8"]))
            probs.append(f"seed {r['seed']} {r['width']}x{r['height']}: pixels differ from golden "
                         f"(8x8 fingerprint max diff {d})")
    return probs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--update", action="store_true", help="write the golden file")
    a = ap.parse_args(argv)
    from .session import open_session
    with open_session(log=lambda m: print(m, file=sys.stderr)) as s:
        cur = render_golden(s)
    if a.update:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(cur, indent=1) + "\n")
        print(f"wrote {GOLDEN}")
        return 0
    probs = compare(cur, json.loads(GOLDEN.read_text()))
    print("\n".join(probs) or "golden renders identical")
    return 1 if probs else 0


if __name__ == "__main__":
    sys.exit(main())
