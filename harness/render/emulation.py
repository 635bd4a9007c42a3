"""Activation emulation for the render gate.

On a CPU (and on GPUs below a format's native path) ComfyUI dequantizes the weight and multiplies in
full precision: ``input_scale`` and ``full_precision_matrix_mult`` are never used, so a file with
activation scales taken from the weights renders like a good one. The gate therefore renders every
candidate that declares an activation path a second time with quantgate's ``QGActivationEmulation``
node between the model loader and the sampler: each quantized Linear's input is fake-quantized the
way the native kernel would (comfy-kitchen's reference functions), and the verdict is taken on that
render.

The policy always comes from the CANDIDATE file (not from the NVFP4 dequantized twin that a ComfyUI
older than 0.8 renders instead):

* fp8 (comfy_quant or a legacy file whose marker allows fp8 matmul): static ``input_scale``, or 1.0
  when the layer has neither input_scale nor full_precision_matrix_mult (ComfyUI >= 0.4);
* nvfp4: per-16-block e4m3 scales under the static ``input_scale`` or, without one, a dynamic global
  scale amax/(448*6);
* layers with full_precision_matrix_mult (and legacy files with the 2-element marker): weight-only,
  no activation path.
"""
from __future__ import annotations

import json

from quant.activations.statistics import PREFIXES

NODE = "QGActivationEmulation"


def activation_policy(path) -> dict | None:
    """{"layers": {linear: {"format", "input_scale"}}} of every layer with an activation path, or None."""
    from . import twin
    st = twin.structure(path)
    layers = {}
    try:
        for la in st.declared:
            spec = la.spec
            emu = None if spec is None or la.fpmm or "weight" not in la.keys else \
                spec.emulation(la.conf if isinstance(la.conf, dict) else {})
            if emu is None:
                continue
            k = la.keys.get(spec.input_scale_key)
            v = None
            if k is not None:
                t = st.src.get(k)
                if t.numel() == 1:
                    v = float(t.float().reshape(()))
            name = la.name
            for p in PREFIXES:
                if name.startswith(p):
                    name = name[len(p):]
                    break
            layers[name] = {**emu, "input_scale": v}
    finally:
        st.src.close()
    return {"layers": layers} if layers else None


def describe(policy: dict | None) -> dict:
    """Counts per kind: {"fp8 static": n, "fp8 unit 1.0": n, "nvfp4 static": n, "nvfp4 dynamic": n}."""
    out: dict[str, int] = {}
    from quant import formats
    static = {f.kernel for f in formats.FORMATS.values() if f.static_input_scale}
    unit = {f.kernel for f in formats.FORMATS.values() if f.weight_only_without_input_scale}
    short = {f.kernel: f.activation_short for f in formats.FORMATS.values()}
    for p in (policy or {}).get("layers", {}).values():
        fam = p["format"]
        if p["input_scale"] is not None:
            k = f"{fam} static input_scale"
        elif fam in unit:
            k = f"{fam} unit scale 1.0"
        elif fam in static:
            k = f"{fam} dynamic scale"
        else:
            k = f"{fam} {short.get(fam, 'dynamic')}" + (f" after ConvRot (group {p['group']})" if p.get("group") else "")
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def wrap(wf: dict, model_name: str, policy: dict, model_node: str | None = None) -> dict:
    """``wf`` (built for ``model_name``) with the emulation node after its model loader."""
    from . import graph
    loader = graph.model_loader(wf, model_node, model_name)
    return graph.with_emulation(wf, loader, json.dumps(policy, sort_keys=True))


# ---- the render gate's hooks (harness.render.gate calls these) --------------------------------

def attach(cands, session) -> None:
    """Read each candidate's activation policy from its file (GGUF files have none); make sure the
    server has the emulation node when any candidate needs it."""
    for c in cands:
        c.activations = None if c.format == "gguf" else activation_policy(c.path)
    if any(c.activations for c in cands):
        session.check_nodes({"qg": {"class_type": NODE}})


def extra_renders(cands, per_candidate: int) -> int:
    return per_candidate * sum(1 for c in cands if c.activations)


def candidate_dict(c) -> dict:
    if not c.activations:
        return {"emulated": False}
    return {"emulated": True, "layers": describe(c.activations),
            "min_ssim_weight_only": min((r["weight_only"]["ssim"] for r in c.renders if "weight_only" in r),
                                        default=None)}


def render_emulated(render, c, name, seed, w, h, base, img, r: dict, images: dict, ssim_pair, log) -> bool:
    """Render (seed, w, h) again with the activations emulated; ``r`` (the weight-only render's row)
    becomes the emulated row with the weight-only numbers under ``r["weight_only"]``. False when
    ComfyUI failed (``c.execution_error`` set)."""
    from ..comfy.errors import ExecutionError
    from . import score
    try:
        res, _ = render(name, seed, w, h, f"{c.label:<9} seed {seed} {w}x{h} activations emulated", c.activations,
                        cache=getattr(c, "role", "candidate") == "reference")
    except ExecutionError as e:
        c.execution_error = {"node_id": e.node_id, "node_type": e.node_type,
                             "exception_type": e.exception_type, "message": e.message[:2000]}
        log(f"  {c.label} (activations emulated): {e}")
        return False
    img2 = res.images[0][1]
    s2, d2 = ssim_pair(base, img2)
    images.setdefault("weight_only", {}).setdefault(c.label, {})[(seed, w, h)] = img
    images["candidates"][c.label][(seed, w, h)] = img2
    r["weight_only"] = {k: r[k] for k in ("ssim", "max_abs_diff", "pass", "pixels_sha256")}
    r.update(ssim=s2, max_abs_diff=d2, pixels_sha256=score.pixel_sha256(img2), activations="emulated",
             seconds=round(r["seconds"] + res.seconds, 3), **{"pass": s2 >= c.threshold})
    return True


def explain(c) -> str:
    """Suffix of the SSIM reason of a candidate judged on emulated renders."""
    if not c.activations:
        return ""
    wo = [r["weight_only"] for r in c.renders if "weight_only" in r]
    txt = (" with activations emulated as the format's native kernel quantizes them ("
           + ", ".join(f"{n} {k}" for k, n in describe(c.activations).items()) + ")")
    if wo and all(x["pass"] for x in wo):
        txt += (f"; the weight-only render passes (min SSIM {min(x['ssim'] for x in wo):.4f}): the activation "
                "scales are wrong")
    return txt
