"""The render gate: render the source and each candidate with the same workflow and seeds in a
real ComfyUI, score every pair with SSIM, prove the render discriminates (control) and is
deterministic (repeat), read ComfyUI's load warnings, and decide.

Baseline = the source checkpoint; candidate = a converted file; every seed at every size.
Control = the source rendered with another seed; it must score far below the thresholds.
Repeat = the first baseline rendered again; it must be pixel-identical.
"""
from __future__ import annotations

import functools
import json

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from quant import __version__ as TOOL_VERSION
from quant.comfy.versions import comfy_has, version_lt
from quant.errors import InputError, UsageError

from ..comfy.errors import ComfyError, ExecutionError
from ..console import step_printer, tty
from ..verify.record import sha256_file
from . import emulation, reference, score, twin
from .workflow import Workflow

POLICY_PATH = Path(__file__).resolve().parent.parent / "policy.toml"


def load_policy(path=None) -> dict:
    """The render-gate policy TOML through its one validated loader (types, ranges, finite numbers)."""
    from quant.inputs import policy_toml
    return policy_toml(Path(path) if path else POLICY_PATH)


@dataclass
class Candidate:
    path: Path
    label: str | None = None
    format: str = ""
    sha256: str = ""
    rendered_as: str = "file"          # or "dequantized twin"
    render_path: Path | None = None
    twin_sha256: str | None = None
    threshold: float = 0.0
    verify: dict | None = None
    load_warnings: list = field(default_factory=list)
    execution_error: dict | None = None
    renders: list = field(default_factory=list)
    verdict: str = "pending"
    reasons: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    seconds: float = 0.0
    activations: dict | None = None    # activation policy from the file (emulated renders), or None
    reference: dict | None = None      # the reference conversion it is held to, and the relative verdict
    calibration_overlap: list = field(default_factory=list)   # calibration seeds (file metadata) the gate renders
    role: str = "candidate"            # or "reference" (made by the gate; never decides the verdict)
    slot: str = "model"                # the workflow placeholder it fills (A14B: "model" high, "model_low" low)

    def as_dict(self) -> dict:
        return {"label": self.label, "path": str(self.path), "sha256": self.sha256, "format": self.format,
                "slot": self.slot,
                "rendered_as": self.rendered_as, "twin_sha256": self.twin_sha256, "threshold": self.threshold,
                "min_ssim": min((r["ssim"] for r in self.renders), default=None),
                "verify": self.verify, "load_warnings": self.load_warnings,
                "execution_error": self.execution_error, "verdict": self.verdict, "reasons": self.reasons, "notes": self.notes,
                "seconds": round(self.seconds, 3), "activations": emulation.candidate_dict(self),
                "reference": self.reference, "calibration_seeds_rendered": self.calibration_overlap}


class Progress:
    def __init__(self, log, total: int):
        self.log, self.total, self.n = log or (lambda *_: None), total, 0

    def step(self, what: str):
        self.n += 1
        return f"[{self.n}/{self.total}] {what}"


def _benign_unexpected(c, warning: dict, comfy_version: str) -> list[str]:
    """``.comfy_quant`` tensors that ComfyUI < 0.4.0 reports as unexpected although the header's
    ``_quantization_metadata`` gives it the same layer config (converters write both on purpose)."""
    if warning["kind"] != "unexpected":
        return []
    if comfy_has("comfy_quant_tensor", comfy_version) is not False:
        return []                                   # >= 0.4.0 reads them (or the version is unknown)
    if not hasattr(c, "_header_layers"):
        try:
            st = twin.structure(c.path)
            st.src.close()
            c._header_layers = set(st.header_layers or {})
        except Exception:
            c._header_layers = set()
    return [k for k in warning["keys"] if k.endswith(".comfy_quant") and k[: -len(".comfy_quant")] in c._header_layers]


def _ssim_pair(a, b):
    return round(score.ssim(a, b), 6), score.max_abs_diff(a, b)


def calibration_seed_overlap(path, seeds) -> list[int]:
    """Sampler seeds of the candidate's calibration (``quantgate.calibration`` metadata that convert
    --calibration writes) that are also render seeds of this gate run."""
    got = (_calibration_record(path) or {}).get("seeds") or []
    return sorted(set(got) & {int(s) for s in seeds})


def check_render_inputs(source, candidates) -> None:
    """Every file the gate hands to ComfyUI must be a valid safetensors file: ComfyUI unpickles
    .ckpt/.pt/.bin files, so those (and anything else) are refused before a server starts. GGUF
    candidates are rendered as their dequantized twin (never handed over) and pre-scanned."""
    from quant.safetensors_io import read_header
    srcs = list(source) if isinstance(source, (list, tuple)) else [source]
    for i, p in enumerate(srcs + [c if not isinstance(c, tuple) else c[1] for c in candidates]):
        p = Path(p)
        if p.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"):
            raise InputError("pickle-based checkpoints are never given to ComfyUI (it would unpickle them); "
                             "the render gate takes .safetensors files", p)
        if p.is_dir() or not p.is_file():
            raise InputError("not a file; the render gate takes single .safetensors files", p)
        if i >= len(srcs) and twin.is_gguf(p):   # a candidate rendered as its gguf-py dequantized twin
            from quant.gguf.safety import prescan
            prescan(p)
            continue
        read_header(p)      # InputError for anything that is not a well-formed safetensors file


def _plan(policy: dict):
    """(seeds, sizes, workflow settings, render timeout) from the policy's [plan]."""
    plan = policy["plan"]
    seeds = [int(s) for s in plan["seeds"]]
    sizes = [(int(w), int(h)) for w, h in plan["sizes"]]
    if not seeds:
        raise UsageError("the policy's plan has no seeds")
    settings = {k: plan[k] for k in ("steps", "cfg", "sampler", "scheduler", "cond_seed", "neg_seed") if k in plan}
    return seeds, sizes, settings, float(plan.get("render_timeout_s", 300))


def _prepare(c: Candidate, cands: list, session, source: Path, policy: dict, verify_fn, work_dir, log):
    """What the candidate is, its threshold, its verify result, and what the server renders (the file
    or a dequantized twin)."""
    c.sha256 = sha256_file(c.path)
    if twin.is_gguf(c.path):
        c.format = "gguf"
        c.label = c.label or twin.gguf_label(c.path)
    else:
        c.format = twin.candidate_format(c.path)
    c.label = c.label or c.format
    if any(o is not c and o.label == c.label for o in cands[: cands.index(c)]):
        c.label = f"{c.label}#{cands.index(c) + 1}"      # labels key the images and the report
    thr = policy["thresholds"]
    c.threshold = float(thr.get(c.format, thr.get("default", 0.95)))
    if verify_fn is not None and c.format != "gguf":
        c.verify = verify_fn(c.path, source)
    if c.format == "gguf":
        if work_dir is None:
            raise UsageError("a work directory is needed to write the dequantized twin")
        c.rendered_as = "dequantized twin (gguf-py)"
        tp = work_dir / f"{c.path.stem}.gguf-dequantized-twin.safetensors"
        log(f"{c.label}: rendering its dequantized safetensors twin (gguf-py; the format gate does not apply)")
        twin.make_gguf_twin(c.path, tp)
        c.render_path = tp
        c.twin_sha256 = sha256_file(tp)
        c.notes.append("GGUF: rendered as its dequantized twin (every tensor decoded by gguf-py, as ComfyUI-GGUF "
                       "dequantizes on the fly); quantgate verify does not apply to GGUF files")
    elif twin.server_supports(c.format, session.version):
        c.render_path = c.path
    else:
        if work_dir is None:
            raise UsageError("a work directory is needed to write the dequantized twin")
        c.rendered_as = "dequantized twin"
        tp = work_dir / f"{c.path.stem}.dequantized-twin.safetensors"
        log(f"{c.label}: ComfyUI {session.version} cannot load {c.format} (needs >= {twin.loads_since(c.format)}); "
            f"rendering its dequantized twin (comfy-kitchen eager reference)")
        twin.make_dequantized_twin(c.path, tp, source)
        c.render_path = tp
        c.twin_sha256 = sha256_file(tp)


class _Renderer:
    """One workflow, one settings dict, a progress counter and the render times."""

    def __init__(self, session, workflow: Workflow, settings: dict, timeout: float, log, total: int,
                 source_name: str | None = None):
        self.session, self.workflow, self.settings, self.timeout, self.log = session, workflow, settings, timeout, log
        self.prog = Progress(log, total)
        self.times: list[float] = []
        self.source_name = source_name
        self.cache: dict = {}           # reference renders: same file, seed, size and policy -> same pixels

    def __call__(self, model_name, seed, w, h, what, activations=None, slot: str = "model", cache=False):
        """``slot``: the placeholder ``model_name`` fills (the caller's, never looked up by name: one file
        can be a candidate in two slots, as in the A14B expert-swap check)."""
        ck = (model_name, slot, seed, w, h, json.dumps(activations, sort_keys=True)) if cache else None
        if ck is not None and ck in self.cache:
            return self.cache[ck]
        if slot == "model":
            wf = self.workflow.build(model_name, seed, w, h, self.settings, prefix="qg")
        else:       # a companion slot (A14B low-noise expert): the source fills {{model}}
            wf = self.workflow.build(self.source_name, seed, w, h, {**self.settings, slot: model_name}, prefix="qg")
        if activations:
            wf = emulation.wrap(wf, model_name, activations, self.workflow.model_node)
        msg = self.prog.step(what)
        res = self.session.client.run(wf, timeout=self.timeout, on_progress=step_printer(msg) if tty() else None)
        if not res.images:
            raise ComfyError("the workflow produced no image (it needs an image output node such as SaveImage)")
        self.times.append(res.seconds)
        self.log(f"  {msg} {res.seconds:.2f} s")
        if ck is not None:
            self.cache[ck] = (res, wf)
        return res, wf


def _baseline(render, src_name, seeds, sizes, source, images):
    """Render the source at every seed and size -> (baseline renders, its load warnings, one prompt)."""
    src_warn, baseline_renders, example_wf = [], [], None
    for seed in seeds:
        for (w, h) in sizes:
            try:
                res, wf = render(src_name, seed, w, h, f"source    seed {seed} {w}x{h}")
            except ExecutionError as e:
                raise ComfyError(f"the source checkpoint does not render: {e}", source) from None
            example_wf = example_wf or wf
            src_warn += [x for x in res.load_warnings if x not in src_warn]
            img = res.images[0][1]
            images["baseline"][(seed, w, h)] = img
            baseline_renders.append({"role": "baseline", "candidate": None, "seed": seed, "width": w, "height": h,
                                     "seconds": round(res.seconds, 3), "pixels_sha256": score.pixel_sha256(img)})
    return baseline_renders, src_warn, example_wf


def _repeat_and_control(render, src_name, seeds, sizes, plan, policy, images, cands, renders):
    """The first baseline again (must be identical) and another seed (must score low) -> (repeat, control)."""
    s0, (w0, h0) = seeds[0], sizes[0]
    base0 = images["baseline"][(s0, w0, h0)]
    res, _ = render(src_name, s0, w0, h0, f"repeat    seed {s0} {w0}x{h0}")
    rep_img = res.images[0][1]
    rep_ssim, rep_diff = _ssim_pair(base0, rep_img)
    rep_min = float(policy.get("repeat", {}).get("min_ssim", 1.0))
    repeat = {"seed": s0, "width": w0, "height": h0, "ssim": rep_ssim, "max_abs_diff": rep_diff,
              "identical": rep_diff == 0, "min_ssim": rep_min, "pass": rep_ssim >= rep_min}
    renders.append({"role": "repeat", "candidate": None, "seed": s0, "width": w0, "height": h0, "ssim": rep_ssim,
                    "max_abs_diff": rep_diff, "seconds": round(res.seconds, 3), "threshold": rep_min,
                    "pass": repeat["pass"], "pixels_sha256": score.pixel_sha256(rep_img)})
    cseed = s0 + int(plan.get("control_seed_offset", 1000))
    res, _ = render(src_name, cseed, w0, h0, f"control   seed {cseed} {w0}x{h0}")
    ctl_img = res.images[0][1]
    ctl_ssim, ctl_diff = _ssim_pair(base0, ctl_img)
    images["control"] = (s0, cseed, w0, h0, ctl_img)
    ctl_pol = policy["control"]
    lowest = min([c.threshold for c in cands] or [float(policy["thresholds"].get("default", 0.95))])
    ctl_limit = min(float(ctl_pol.get("max_ssim", 0.9)), lowest - float(ctl_pol.get("min_margin", 0.05)))
    control = {"seed": cseed, "compared_to_seed": s0, "width": w0, "height": h0, "ssim": ctl_ssim,
               "max_abs_diff": ctl_diff, "max_ssim": round(ctl_limit, 6), "pass": ctl_ssim <= ctl_limit}
    renders.append({"role": "control", "candidate": None, "seed": cseed, "width": w0, "height": h0,
                    "ssim": ctl_ssim, "max_abs_diff": ctl_diff, "seconds": round(res.seconds, 3),
                    "threshold": round(ctl_limit, 6), "pass": control["pass"],
                    "pixels_sha256": score.pixel_sha256(ctl_img)})
    return repeat, control


def _render_candidate(render, c: Candidate, name, seeds, sizes, images, renders, log):
    """Every seed and size of one candidate, scored against the baseline (stops at an execution error)."""
    tc = time.monotonic()
    images["candidates"][c.label] = {}
    # a reference conversion is judged on its emulated render only: no weight-only render of it
    direct = c.activations if c.role == "reference" else None
    for seed in seeds:
        for (w, h) in sizes:
            try:
                res, _ = render(name, seed, w, h, f"{c.label:<9} seed {seed} {w}x{h}"
                                + (" activations emulated" if direct else ""), direct, cache=c.role == "reference")
            except ExecutionError as e:
                c.execution_error = {"node_id": e.node_id, "node_type": e.node_type,
                                     "exception_type": e.exception_type, "message": e.message[:2000]}
                log(f"  {c.label}: {e}")
                break
            for x in res.load_warnings:
                if x not in c.load_warnings:
                    c.load_warnings.append(x)
            img = res.images[0][1]
            base = images["baseline"][(seed, w, h)]
            if img.shape != base.shape:
                raise ComfyError(f"{c.label}: image size {img.shape} differs from the source's {base.shape}")
            s, d = _ssim_pair(base, img)
            images["candidates"][c.label][(seed, w, h)] = img
            r = {"role": c.role, "candidate": c.label, "seed": seed, "width": w, "height": h, "ssim": s,
                 "max_abs_diff": d, "seconds": round(res.seconds, 3), "threshold": c.threshold,
                 "pass": s >= c.threshold, "pixels_sha256": score.pixel_sha256(img),
                 "rendered_as": c.rendered_as}
            if direct:
                r["activations"] = "emulated"
            elif c.activations and not emulation.render_emulated(render, c, name, seed, w, h, base, img, r, images,
                                                               _ssim_pair, log):
                break
            c.renders.append(r)
            renders.append(r)
        if c.execution_error:
            break
    c.seconds = time.monotonic() - tc


def _decide(c: Candidate, comfy_version: str, load_pol: dict, control: dict, repeat: dict, src_warn: list):
    """The candidate's verdict, its reasons and notes."""
    if c.execution_error:
        e = c.execution_error
        c.reasons.append(f"ComfyUI failed to render it: node {e['node_id']} ({e['node_type']}) raised "
                         f"{e['exception_type']}: {e['message'].splitlines()[0][:200] if e['message'] else ''}")
    bad = [r for r in c.renders if not r["pass"]]
    if bad:
        worst = min(bad, key=lambda r: r["ssim"])
        c.reasons.append(f"SSIM {worst['ssim']:.4f} < {c.threshold} (seed {worst['seed']} "
                         f"{worst['width']}x{worst['height']}; {len(bad)}/{len(c.renders)} renders below)"
                         + emulation.explain(c))
    c.notes = []
    for x in c.load_warnings:
        keys = x["keys"]
        benign = _benign_unexpected(c, x, comfy_version)
        if benign:
            c.notes.append(f"ComfyUI {comfy_version} ignores {len(benign)} .comfy_quant tensors "
                           "(< 0.4.0 reads the same per-layer config from the header's _quantization_metadata)")
            keys = [k for k in keys if k not in benign]
        if not keys:
            continue
        if (x["kind"] == "missing" and load_pol.get("fail_on_missing", True)) or (
                x["kind"] == "unexpected" and load_pol.get("fail_on_unexpected", True)):
            shown = ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")
            c.reasons.append(f"ComfyUI loaded it with {x['kind']} keys ({len(keys)}): {shown} "
                             "(the model in memory is not the model in the file)")
    if getattr(c, "calibration_reason", None):
        c.reasons.append(c.calibration_reason)
    if c.calibration_overlap:
        c.notes.append(f"warning: calibrated on sampler seeds {c.calibration_overlap}, which the gate also renders: "
                       "these renders are not held out (calibrate on other seeds; `quantgate calibrate`'s default "
                       "seeds are disjoint from the gate's)")
    v = c.verify
    need = (v or {}).get("min_comfy")
    if need and need != "any" and c.rendered_as == "file" and version_lt(comfy_version, need):
        c.notes.append(f"the file needs ComfyUI >= {need} (verify); this server is {comfy_version}, so the "
                       f"render shows what {comfy_version} does with it (for older ComfyUI convert with "
                       "--comfy-version)")
    if v and v.get("available") and v.get("passed") is False:
        c.reasons.append(f"verify: {v.get('summary') or 'defects found'}")
    if not control["pass"]:
        c.reasons.append(f"control SSIM {control['ssim']:.4f} > {control['max_ssim']:.4f}: the render cannot "
                         "discriminate")
    if not repeat["pass"]:
        c.reasons.append(f"the source rendered twice differs (SSIM {repeat['ssim']:.6f}, max diff "
                         f"{repeat['max_abs_diff']})")
    if src_warn:
        c.reasons.append("the source itself loads with warnings: " + "; ".join(
            f"{x['kind']} {len(x['keys'])}" for x in src_warn))
    c.verdict = "fail" if c.reasons else "pass"


def _references(cands, session, slot_source: dict, policy, work_dir, log) -> list[Candidate]:
    """One reference conversion per distinct (slot, format, per-layer decisions, activation path) among the
    candidates (harness.render.reference); ``c._ref`` is the candidate's. A candidate of a companion slot
    (A14B's low-noise expert) is held to a reference conversion of THAT slot's source, rendered in that
    slot. Candidates without one (GGUF, unquantized, a format quantgate cannot write) get a note."""
    if work_dir is None:
        raise UsageError("a work directory is needed to write the reference conversions")
    refs: dict[tuple, Candidate] = {}
    for c in cands:
        c._ref = None
        if c.format == "gguf":
            c.reference = {"available": False, "why": "no reference conversion for GGUF candidates"}
            continue
        source = slot_source[c.slot]
        out_dir = work_dir if c.slot == "model" else work_dir / f"reference-{c.slot}"   # same layer names per slot
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            path, k, plan = reference.make(c.path, source, out_dir)
        except reference.NoReference as e:
            c.reference = {"available": False, "why": str(e)}
            continue
        pol = emulation.activation_policy(c.path)
        rk = (c.slot, k, json.dumps(sorted((pol or {}).get("layers", {})), sort_keys=True))
        if rk not in refs:
            where = "" if c.slot == "model" else f" ({c.slot})"
            r = Candidate(path, f"reference {c.format}{where}" + (f"#{len(refs) + 1}" if refs else ""),
                          role="reference", slot=c.slot)
            _prepare(r, [r], session, source, policy, None, work_dir, lambda *_: None)
            r.users, r.plan_key, r.layers = [], k, len(plan)
            refs[rk] = r
            log(f"{r.label}: round-to-nearest {c.format} conversion of the {c.slot} slot's source with the "
                f"candidate's per-layer decisions ({len(plan)} quantized layers)")
        refs[rk].users.append(c)
        c._ref = refs[rk]
    return list(refs.values())


def _reference_candidates(cands, session, slot_source, policy, work_dir, log, names: dict) -> list[Candidate]:
    """The reference conversions of ``cands`` (:func:`_references`), visible to the server (``names``) and,
    where their candidates' activations are emulated, emulated the same way with dynamic scales."""
    refs, kept = _references(cands, session, slot_source, policy, work_dir, log), []
    for r in refs:
        try:
            names[r.label] = session.model(r.render_path)
        except ComfyError:
            if session.server is not None:
                raise
            # a server we did not start (--comfy-url) cannot see the gate's own temporary conversion: judged by
            # the absolute floor only, and every report says so (never silently)
            why = (f"the server at {session.client.url} (--comfy-url) cannot load the gate's own reference "
                   "conversion; let quantgate start its server to compare with one")
            log(f"warning: {r.label} not rendered: {why}")
            for c in r.users:
                c._ref, c.reference = None, {"available": False, "why": why}
            continue
        r.activations = reference.policy_for(r.users[0].activations)
        kept.append(r)
    return kept


def _distinct(refs) -> int:
    """Reference files rendered (same file and activation policy: rendered once)."""
    return len({(r.render_path, r.slot, json.dumps(r.activations, sort_keys=True)) for r in refs})


def _calibration_overlaps(cands, seeds, log) -> None:
    for c in cands:
        c.calibration_overlap = calibration_seed_overlap(c.path, seeds)
        if c.calibration_overlap:
            log(f"warning: {c.label} was calibrated on sampler seeds {c.calibration_overlap}, which the gate renders "
                "too: those renders are not held out")


def calibrated_on(path) -> str | None:
    """sha256 of the model the file's input scales were calibrated on (``quantgate.calibration`` metadata that
    convert --act-stats writes), or None."""
    return (_calibration_record(path) or {}).get("model_sha256")


def _calibration_record(path) -> dict | None:
    if twin.is_gguf(path):
        return None
    from quant.inputs import file_calibration_record
    from quant.safetensors_io import read_header
    try:
        return file_calibration_record(read_header(path).metadata, path)
    except InputError:                  # an unreadable header: the gate's own checks say so; no record known
        return None


def _calibration_provenance(cands, slot_source: dict) -> dict:
    """A candidate whose input scales were calibrated on another model than its slot's source fails (the
    scales belong to that model; A14B: the other expert, same layer names and shapes, a render that may not
    show it): ``c.calibration_reason``. Returns slot -> the slot source's sha256."""
    slot_sha = {k: sha256_file(p) for k, p in slot_source.items()}
    for c in cands:
        c.calibration_reason = None
        got = calibrated_on(c.path)
        if got is None or got == slot_sha[c.slot]:
            continue
        other = [s for s, sha in slot_sha.items() if sha == got]
        whose = f"the {other[0]} slot's source (the other model of this workflow)" if other else "another model"
        c.calibration_reason = (f"its input scales were calibrated on {whose} (quantgate.calibration model_sha256 "
                                f"{got[:12]}...), not on the {c.slot} slot's source ({slot_sha[c.slot][:12]}...)")
    return slot_sha


def _judged_rows(c: Candidate) -> list[dict]:
    return c.renders


def _decide_relative(c: Candidate, pol: dict) -> None:
    """The candidate against its own reference conversion (same seeds, sizes, activation path)."""
    r = getattr(c, "_ref", None)
    if r is None:
        if c.reference and not c.reference.get("available", True):
            c.notes.append(f"not compared with a reference conversion: {c.reference['why']}")
        return
    if r.execution_error:
        c.reference = {"available": False, "label": r.label, "why": "the reference conversion failed to render"}
        c.notes.append(f"{r.label} failed to render: not compared with it")
        return
    j = reference.judge(_judged_rows(c), _judged_rows(r), pol)
    j.update(label=r.label, path=str(r.path), sha256=r.sha256, emulated=bool(r.activations))
    c.reference = j
    if not j.get("available"):
        c.notes.append(f"not compared with {r.label}: {j['why']}")
        return
    if not j["pass"]:
        w = j["worst"]
        c.reasons.append(
            f"clearly below its reference conversion ({r.label}: round-to-nearest, same layers"
            f"{', activations emulated with dynamic scales' if r.activations else ''}): mean 1-SSIM "
            f"{j['mean_dissimilarity']:.4f} vs the reference's {j['reference_mean_dissimilarity']:.4f} "
            f"(limit {j['ratio']:g} x + {j['slack']:g} = {j['limit']:.4f} over {j['renders']} renders"
            f"{', margins of the ' + str(j['margins_for_renders']) + '-render entry' if j['margins_for_renders'] else ''}"
            f"; worst seed {w['seed']} "
            f"{w['width']}x{w['height']}: SSIM {w['ssim']:.4f} vs {w['reference_ssim']:.4f})")
        c.verdict = "fail"


def _reference_dict(r: Candidate) -> dict:
    d = r.as_dict()
    d.pop("reference", None)
    d.update(role="reference", used_by=[c.label for c in r.users], quantized_layers=r.layers,
             rounding="round-to-nearest")
    return d


def _tool_versions() -> dict:
    """Versions in quantgate's own process (verify's numeric check runs here, with comfy-kitchen); the
    server's torch is under comfyui.system. For model cards (``quantgate card``)."""
    from importlib import metadata
    out = {}
    for key, dist in (("torch", "torch"), ("comfy_kitchen", "comfy-kitchen")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    return out


def _slots(source: Path, candidates, companions: dict | None, workflow: Workflow):
    """(companions, slot -> source file, Candidates): each candidate ``(label, path, slot)`` fills one of
    the workflow's model placeholders and is compared with that slot's source."""
    companions = {k: Path(v) for k, v in (companions or {}).items()}
    missing = sorted(set(companions) - workflow.holes)
    if missing:
        raise UsageError(f"the workflow has no {{{{{missing[0]}}}}} placeholder for a companion model")
    check_render_inputs([source, *companions.values()], candidates)
    slot_source = {"model": source, **companions}
    cands = []
    for c in candidates:
        label, path, slot = (tuple(c) + ("model",))[:3] if isinstance(c, tuple) else (None, c, "model")
        if slot not in slot_source:
            raise UsageError(f"candidate {label or path}: no source for the workflow slot {slot!r}")
        cands.append(Candidate(Path(path), label, slot=slot))
    return companions, slot_source, cands


def run_gate(session, source, candidates, *, policy: dict | None = None, workflow: Workflow | None = None,
             work_dir=None, verify_fn=None, log=None, emulate: bool = True, companions: dict | None = None,
             compare_reference: bool | None = None) -> dict:
    """Render and score. ``candidates``: paths or (label, path). Returns the gate record; images
    are under ``record["_images"]`` (for the report; not serialised). ``emulate``: candidates that
    declare an activation path are rendered again with their activations quantized as the native
    kernel would (harness.render.emulation) and judged on that render. ``companions``: source files of
    the workflow's other model placeholders (A14B: ``{"model_low": low-noise expert}``); a candidate
    ``(label, path, slot)`` replaces that slot's source and is compared against that source."""
    t_start = time.monotonic()
    log = log or (lambda *_: None)
    policy = policy or load_policy()
    workflow = workflow or Workflow.from_arg(None, None)
    source = Path(source)
    work_dir = Path(work_dir) if work_dir else None
    seeds, sizes, settings, timeout = _plan(policy)
    reference_on = policy.get("reference", {}).get("enabled", True) if compare_reference is None else compare_reference
    companions, slot_source, cands = _slots(source, candidates, companions, workflow)
    timings = {"server_start_s": round(session.server.start_seconds, 3) if session.server else None}
    t0 = time.monotonic()
    for c in cands:
        _prepare(c, cands, session, slot_source[c.slot], policy, verify_fn, work_dir, log)
    _calibration_overlaps(cands, seeds, log)
    slot_sha = _calibration_provenance(cands, slot_source)
    timings["prepare_s"] = round(time.monotonic() - t0, 3)
    # every file must be visible to the server before anything renders (fails fast on a URL server)
    src_name = session.model(source)
    for slot, p in companions.items():
        settings[slot] = session.model(p)
    cand_names = {c.label: session.model(c.render_path) for c in cands}
    if "vae" in workflow.holes:
        settings["vae"] = session.vae()
    emulation.attach(cands, session) if emulate else None
    refs = _reference_candidates(cands, session, slot_source, policy, work_dir, log, cand_names) if reference_on else []
    n_base = len(seeds) * len(sizes)
    render = _Renderer(session, workflow, settings, timeout, log, n_base + 2 + n_base * (len(cands) + _distinct(refs))
                       + emulation.extra_renders(cands, n_base), source_name=src_name)
    images: dict = {"baseline": {}, "control": None, "candidates": {}}
    renders: list = []
    baseline_renders, src_warn, example_wf = _baseline(render, src_name, seeds, sizes, source, images)
    repeat, control = _repeat_and_control(render, src_name, seeds, sizes, policy["plan"], policy, images, cands,
                                          renders)
    for c in refs + cands:          # the references first: each candidate is judged against its own
        _render_candidate(functools.partial(render, slot=c.slot), c, cand_names[c.label], seeds, sizes, images,
                          renders, log)
    for c in cands:
        _decide(c, session.version, policy.get("load", {}), control, repeat, src_warn)
        _decide_relative(c, policy.get("reference", {}))          # no-op without a reference

    stats = session.stats
    render_times = render.times
    timings.update(total_s=round(time.monotonic() - t_start, 3), renders=len(render_times),
                   render_s_mean=round(float(np.mean(render_times)), 3) if render_times else None,
                   render_s_max=round(float(np.max(render_times)), 3) if render_times else None)
    verdict = "pass" if cands and all(c.verdict == "pass" for c in cands) else "fail"
    record = {
        "schema": "quantgate.gate/1",
        "tool": {"name": "quantgate", "version": TOOL_VERSION, **_tool_versions()},
        "comfyui": {"version": session.version, "url": None if session.owned else session.client.url,
                    "embedded": bool(getattr(session, "embedded", False)),
                    "system": {k: stats.get("system", {}).get(k) for k in
                               ("os", "python_version", "pytorch_version", "ram_total", "ram_free", "argv")},
                    "devices": stats.get("devices", [])},
        "source": {"path": str(source), "sha256": slot_sha["model"], "load_warnings": src_warn,
                   "companions": {k: {"path": str(p), "sha256": slot_sha[k]} for k in companions}},
        "candidates": [c.as_dict() for c in cands],
        "references": [_reference_dict(r) for r in refs],
        "workflow": {"name": workflow.source, "model_node": workflow.model_node, "settings": settings,
                     "example_prompt": example_wf},
        "seeds": seeds, "sizes": [list(s) for s in sizes],
        "control": control, "repeat": repeat,
        "baseline_renders": baseline_renders,
        "renders": renders,
        "policy": {k: policy[k] for k in policy},
        "timings": timings,
        "verdict": verdict,
        "_images": images,
    }
    return record
