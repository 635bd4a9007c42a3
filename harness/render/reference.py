"""The candidate's *reference conversion*: what a plain conversion of the same source, in the same
format and with the same per-layer decisions, renders like -- the bar a candidate is held to beside
the absolute SSIM floor.

The absolute floor (policy ``[thresholds]``) has to sit below every legitimate file of a format on every
model, so it lets through damage that is visible on a model where good files score far higher (issue 21:
an NVFP4 file with every ``input_scale`` halved, min SSIM 0.9505, passed a 0.90 floor while good NVFP4 files
of that model score 0.976-0.990). The gate therefore converts the source itself:

* weights: round-to-nearest (quant.convert, bit-exact with comfy-kitchen), the candidate's format, and
  exactly the candidate's per-layer decisions (every layer the candidate declares as fp8 / NVFP4 is
  quantized the same way, everything else is kept): "same format and preset" even for a file quantgate
  did not write;
* activations: where the candidate declares an activation path (an fp8 layer without
  ``full_precision_matrix_mult``, an NVFP4 layer) the reference's inputs are quantized the same way
  (same layers, same format) under *dynamic* scales (per call amax / full scale; NVFP4: the kernel's own
  dynamic global scale): what a right static scale approaches;
* it is rendered with the same workflow, seeds and sizes, weight-only and (where the candidate is)
  emulated, and scored against the same source renders.

The candidate fails when it is *clearly* below its reference: its mean dissimilarity (1 - SSIM over the
renders it is judged on) exceeds ``ratio`` x the reference's + ``slack`` (policy ``[reference]``; the
numbers come from measured render noise, see policy.toml and README "The render gate").
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from pathlib import Path

from quant.errors import InputError


class NoReference(Exception):
    """The candidate has no reference conversion (GGUF, unquantized, a format quantgate cannot write)."""


def _source_names(source) -> set[str]:
    from quant.safetensors_io import read_header
    return set(read_header(source).tensors)


def _match_source(layer: str, names: set[str]) -> str | None:
    """The source's weight tensor of a candidate layer (the two may differ by a ``model.diffusion_model.``
    style prefix)."""
    from quant.activations.statistics import PREFIXES
    cands = [layer]
    for p in PREFIXES:
        cands.append(layer[len(p):] if layer.startswith(p) else p + layer)
    for c in cands:
        if f"{c}.weight" in names:
            return f"{c}.weight"
    return None


def layer_plan(candidate, source) -> tuple[str, dict[str, str]]:
    """(target format, {source weight name: "fp8" | "nvfp4"}) of the candidate's declared layers."""
    from quant import formats
    from . import twin
    fmt = twin.candidate_format(candidate)
    if fmt == "unquantized" or fmt not in formats.TARGETS:
        raise NoReference(f"no reference conversion for a {fmt} candidate")
    target = formats.get(fmt)
    names = _source_names(source)
    st = twin.structure(candidate)
    plan: dict[str, str] = {}
    try:
        for la in st.declared:
            if la.spec is None or "weight" not in la.keys:
                continue
            try:
                target.for_action(la.spec.kernel)       # a layer kind a conversion to this format writes
            except ValueError:
                continue
            w = _match_source(la.name, names)
            if w is None:
                raise NoReference(f"layer {la.name!r} of the candidate has no weight in the source")
            plan[w] = la.spec.kernel
    finally:
        st.src.close()
    if not plan:
        raise NoReference("the candidate declares no quantized layer")
    return fmt, plan


def preset_for(target: str, plan: dict[str, str]):
    """A preset that decides exactly ``plan``'s layers (and keeps everything else)."""
    from quant import formats
    from quant.presets import Preset, Rule
    fmt = formats.get(target)
    # the preset's sensitive-layer value that makes a layer ``action`` in this format's files (w4a4: "fp8" ->
    # int8 ConvRot); the format's own mapping, no format names here
    value = {a: v for v, a in fmt.sensitive_actions.items()}
    rules = []
    for name, action in sorted(plan.items()):
        pat = "".join("[" + ch + "]" if ch in "*?[]" else ch for ch in name)       # literal fnmatch pattern
        assert fnmatch.fnmatchcase(name, pat)
        if action == fmt.kernel:
            rules.append(Rule((pat,), "quant", reason="as the candidate"))
        else:
            rules.append(Rule((pat,), "quant", nvfp4=value.get(action, action), reason=f"{action} as in the candidate"))
    rules.append(Rule(("*",), "keep", reason="kept, as in the candidate"))
    return Preset("reference", "the candidate's own per-layer decisions", None, (), tuple(rules))


def key(target: str, plan: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps([target, sorted(plan.items())]).encode()).hexdigest()[:16]


def make(candidate, source, out_dir) -> tuple[Path, str, dict]:
    """Write the candidate's reference conversion into ``out_dir`` (round-to-nearest, the candidate's
    format and per-layer decisions) -> (path, key, plan). Files with the same decisions share one."""
    from quant.convert import convert
    target, plan = layer_plan(candidate, source)
    k = key(target, plan)
    out = Path(out_dir) / f"reference-{target}-{k}.safetensors"
    if not out.exists():
        try:
            convert(source, out, target, preset_for(target, plan), force=True, pipelined=False)
        except InputError as e:
            raise NoReference(f"the reference conversion failed: {e.problem}") from None
    return out, k, plan


def policy_for(candidate_policy: dict | None) -> dict | None:
    """The reference's activation policy: the candidate's layers with an activation path, same format,
    dynamic scales (per call amax / full scale)."""
    if not candidate_policy:
        return None
    return {"layers": {n: {**p, "input_scale": None, "dynamic": True} for n, p in candidate_policy["layers"].items()}}


# ---- the relative verdict -------------------------------------------------------------------------

def margins(pol: dict, n: int) -> tuple[float, float, int | None]:
    """(ratio, slack, n of the entry used) for a mean over ``n`` renders: policy ``[[reference.margins]]``
    holds them by the number of renders averaged (the paired noise shrinks with n); the entry of the largest
    tabulated n <= ``n`` (fewer renders than any entry: the smallest entry's). Without a table: the
    policy's single ``ratio`` / ``slack``."""
    table = sorted(pol.get("margins") or [], key=lambda e: e["renders"])
    if table:
        e = ([x for x in table if x["renders"] <= n] or table[:1])[-1]
        return float(e["ratio"]), float(e["slack"]), int(e["renders"])
    return float(pol.get("ratio", 2.0)), float(pol.get("slack", 0.005)), None


def judge(cand_rows: list[dict], ref_rows: list[dict], pol: dict) -> dict:
    """Candidate vs reference over the renders both have (same seed and size; SSIM vs the same source
    render; emulated rows when the candidate is emulated). ``pol``: ``ratio``, ``slack``.

    dissimilarity d = 1 - SSIM; fail when mean d(candidate) > ratio x mean d(reference) + slack, the margins
    for the number of renders averaged (:func:`margins`)."""
    ref = {(r["seed"], r["width"], r["height"]): r for r in ref_rows}
    pairs = [(r, ref[(r["seed"], r["width"], r["height"])]) for r in cand_rows
             if (r["seed"], r["width"], r["height"]) in ref]
    if not pairs:
        return {"available": False, "why": "no render of the reference to compare with"}
    dc = sum(1 - c["ssim"] for c, _ in pairs) / len(pairs)
    dr = sum(1 - r["ssim"] for _, r in pairs) / len(pairs)
    ratio, slack, measured_n = margins(pol, len(pairs))
    limit = ratio * dr + slack
    worst = max(pairs, key=lambda p: p[1]["ssim"] - p[0]["ssim"])
    return {"available": True, "renders": len(pairs), "mean_dissimilarity": round(dc, 6),
            "reference_mean_dissimilarity": round(dr, 6), "limit": round(limit, 6), "ratio": ratio,
            "slack": slack, "margins_for_renders": measured_n, "excess": round(dc / dr, 3) if dr > 0 else None,
            "worst": {"seed": worst[0]["seed"], "width": worst[0]["width"], "height": worst[0]["height"],
                      "ssim": worst[0]["ssim"], "reference_ssim": worst[1]["ssim"]},
            "pass": dc <= limit}
