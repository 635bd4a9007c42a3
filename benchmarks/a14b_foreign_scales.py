"""Issue 23: why the render gate does not see the A14B defect "one expert's input_scale taken from the other".

Measured in process (one thread) on the trained tiny pair ``wan22-a14b-tiny``, no ComfyUI:

1. every Linear's activation amax of each expert over the A14B sampling (each expert sees only its own
   steps; classes 1-3, sampler seeds 1-3, latents 8x8 and 8x12: ``a14b_tiny.activation_amax``), and the
   per-layer ratio high / low -- how far apart the two calibrations are;
2. how much of each expert's activations the OTHER expert's scale clips (fraction of |x| above the
   foreign clip level amax_other, per layer), on the render plan's inputs (class 1, seeds 1-3);
3. renders (the A14B sampler: high expert before the switch step, low after; Euler, simple, 6 steps,
   coarse decode to 64x64 / 96x64 RGB) with both experts' weights in fp8 (per-tensor round-to-nearest)
   and every Linear's input fake-quantized to e4m3 under a STATIC scale amax/448:
   ``own`` (each expert its own calibration), ``high<-low`` (the planted file: the high expert with the
   low expert's scales), ``low<-high``, and ``dynamic`` (per call amax: what the gate's reference
   conversion emulates), and ``weight-only``, each scored with skimage SSIM against the bf16 pair's render,
   for each class (cond_seed 1-3; the gate's plan renders class 1 only); ``mean_d`` = mean 1 - SSIM.

    python benchmarks/a14b_foreign_scales.py -o benchmarks/results/cpu-a14b-foreign-scales-2026-12-07.json

(with the ./qg environment's Python, ~/.cache/quantgate/venv-<hash>/bin/python; one thread.)
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

FP8_MAX = 448.0
PLAN_SEEDS = (1, 2, 3)
CLASSES = (1, 2, 3)                   # the gate's plan renders cond_seed 1 (class 1) only
PLAN_SIZES = ((8, 8), (8, 12))        # latents of the gate's 64x64 and 96x64 renders


def _fq(x, scale):
    import torch
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).to(x.dtype) * scale


def _quantize_weights(model):
    import torch
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                s = (m.weight.abs().max() / FP8_MAX).clamp(min=1e-12)
                m.weight.copy_(_fq(m.weight, s))


def _act_hooks(model, scales: dict | None):
    """Fake-quantize every Linear's input: static ``scales[name]`` (amax / 448), or per call when None."""
    import torch
    hooks = []
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue

        def pre(mod, inp, name=name):
            x = inp[0]
            s = (x.abs().max() / FP8_MAX).clamp(min=1e-12) if scales is None else scales[name] / FP8_MAX
            return (_fq(x, s),)
        hooks.append(m.register_forward_pre_hook(pre))
    return hooks


def _clip_fractions(high, low, amax) -> dict:
    """Per expert and layer: the fraction of input elements whose |x| exceeds the OTHER expert's amax."""
    import torch
    from harness.train import a14b_tiny
    counts = {"high": {}, "low": {}}
    hooks = []
    for e, model, other in (("high", high, amax["low"]), ("low", low, amax["high"])):
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.Linear):
                def pre(mod, inp, e=e, name=name, lim=other[name]):
                    x = inp[0].detach().abs()
                    n, k = counts[e].get(name, (0, 0))
                    counts[e][name] = (n + x.numel(), k + int((x > lim).sum()))
                hooks.append(m.register_forward_pre_hook(pre))
    try:
        for s in PLAN_SEEDS:
            for h, w in PLAN_SIZES:
                a14b_tiny.sample(high, low, 1, s, h, w)
    finally:
        for hk in hooks:
            hk.remove()
    return {e: {n: k / n_all for n, (n_all, k) in d.items()} for e, d in counts.items()}


def _rgb(z):
    import numpy as np
    import torch.nn.functional as F
    from harness.train import latent
    c = latent.decode_coarse(z[:, :, 0])                                     # [1, 3, h, w]
    up = F.interpolate(c, scale_factor=latent.FACTOR, mode="bilinear", align_corners=False)
    return (up[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def main(argv=None) -> int:
    import numpy as np
    import torch
    from harness.render import score
    from harness.train import a14b_tiny, registry
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", type=Path, required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.monotonic()
    src = registry.sources(a14b_tiny.NAME)
    high, low = a14b_tiny.load_model(src["model"]), a14b_tiny.load_model(src["model_low"])
    amax = a14b_tiny.activation_amax(high, low)
    layers = sorted(amax["high"])
    ratio = {n: amax["high"][n] / amax["low"][n] for n in layers}
    clip = _clip_fractions(high, low, amax)
    k = a14b_tiny.switch_step(6)

    keys = [(c, s, h, w) for c in CLASSES for s in PLAN_SEEDS for h, w in PLAN_SIZES]
    base = {kk: _rgb(a14b_tiny.sample(high, low, *kk)) for kk in keys}
    qh, ql = a14b_tiny.load_model(src["model"]), a14b_tiny.load_model(src["model_low"])
    _quantize_weights(qh)
    _quantize_weights(ql)
    variants = {"own": (amax["high"], amax["low"]), "high<-low (planted)": (amax["low"], amax["low"]),
                "low<-high": (amax["high"], amax["high"]), "dynamic (reference)": (None, None),
                "weight-only": ("none", "none")}
    ssim = {}
    for v, (sh, sl) in variants.items():
        hooks = ([] if sh == "none" else _act_hooks(qh, sh)) + ([] if sl == "none" else _act_hooks(ql, sl))
        try:
            ssim[v] = {f"class {c} seed {s} {w * 8}x{h * 8}": round(score.ssim(
                base[(c, s, h, w)], _rgb(a14b_tiny.sample(qh, ql, c, s, h, w))), 5) for c, s, h, w in keys}
        finally:
            for hk in hooks:
                hk.remove()
    summary = {v: {f"class {c}": {"min": min(x for kk, x in d.items() if kk.startswith(f"class {c} ")),
                                  "mean_d": round(float(np.mean([1 - x for kk, x in d.items()
                                                                 if kk.startswith(f"class {c} ")])), 5)}
                   for c in CLASSES} for v, d in ssim.items()}
    r = np.array([ratio[n] for n in layers])
    out = {
        "what": __doc__.split("\n\n")[0],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "threads": 1, "seconds": round(time.monotonic() - t0, 1),
        "switch_step": k, "steps": 6,
        "amax_ratio_high_over_low": {
            "layers": len(layers), "min": round(float(r.min()), 3), "max": round(float(r.max()), 3),
            "median": round(float(np.median(r)), 3),
            "layers_ratio_gt_2": int((r > 2).sum()), "layers_ratio_lt_half": int((r < 0.5).sum()),
            "per_layer": {n: {"high": round(amax["high"][n], 4), "low": round(amax["low"][n], 4),
                              "ratio": round(ratio[n], 3)} for n in layers}},
        "clipped_fraction_under_other_expert_scale": {
            e: {"layers_clipping": sum(1 for x in d.values() if x > 0),
                "max": max(d.values()), "top": dict(sorted(d.items(), key=lambda kv: -kv[1])[:6])}
            for e, d in clip.items()},
        "ssim_vs_bf16_pair": ssim, "ssim_summary": summary,
    }
    a.output.parent.mkdir(parents=True, exist_ok=True)
    a.output.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps({k: out[k] for k in ("switch_step", "seconds", "ssim_summary")}, indent=1))
    print(json.dumps({k: v for k, v in out["amax_ratio_high_over_low"].items() if k != "per_layer"}))
    print(json.dumps({e: {k: v for k, v in d.items() if k != "top"} for e, d in
                      out["clipped_fraction_under_other_expert_scale"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
