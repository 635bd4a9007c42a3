"""Model cards from a render gate's output (``quantgate card GATE_OUT_DIR -o CARD_DIR``).

A card is a Hugging Face Hub ``README.md``: YAML front matter made by ``huggingface_hub``'s ``ModelCardData``
(tags with ``comfyui`` and the format, ``base_model`` when given, ``pipeline_tag``), parsed back with
``ModelCard`` and compared before anything is written (offline: nothing is sent to the Hub), then
what the gate measured for ONE file of the run -- the format gate's summary, per ComfyUI version the
verdict and min / mean SSIM with its threshold, every render as a PNG beside the card (source |
candidate | difference), the exact workflow (``workflow.json``, the API prompt of the first render), seeds,
sizes, steps, sampler, activation policy, both sha256, the tool versions -- and what the file does not claim.

Everything comes from the gate record (``harness.card.record``); nothing is measured again, and the same gate
folder always gives byte-identical files (no clock, no host names).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from quant.errors import InputError, UsageError

from .record import GateRun, load_gate_dir

IMAGES_DIR = "images"
PIPELINE_TAGS = ("text-to-video", "image-to-video", "text-to-image", "image-to-image")


@dataclass
class Card:
    readme: str
    files: dict[str, bytes] = field(default_factory=dict)      # relative path -> bytes (PNGs, workflow.json)
    inputs: list[str] = field(default_factory=list)            # every file the card was made from
    label: str = ""
    data: dict = field(default_factory=dict)                   # the front matter, as ModelCardData.to_dict()


def _pick(runs: list[GateRun], candidate: str | None) -> str:
    labels = [c.label for c in runs[0].record.candidates]
    if candidate is None:
        if len(labels) == 1:
            return labels[0]
        raise UsageError(f"the gate run checked {len(labels)} files; choose one with --candidate "
                         f"({', '.join(labels)})")
    for c in runs[0].record.candidates:
        if candidate in (c.label, Path(c.path).name):
            return c.label
    raise UsageError(f"no candidate {candidate!r} in this gate run (it has: {', '.join(labels)})")


def _cand(run: GateRun, label: str):
    for c in run.record.candidates:
        if c.label == label:
            return c
    raise InputError(f"candidate {label!r} is missing from this version's gate record", run.path)


def _mean(xs):
    return sum(xs) / len(xs) if xs else None


def _f4(x) -> str:
    return "–" if x is None else f"{x:.4f}"


def _md(s) -> str:
    """Text for a markdown table cell / line: no pipes, no HTML, one line."""
    s = " ".join(str(s).split())
    return (s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("`", "'"))


def _code(s) -> str:
    return "`" + " ".join(str(s).split()).replace("`", "'") + "`"


def _triptych(src, cand) -> bytes:
    """source | candidate | |difference| side by side, upscaled (nearest) so a tiny render is visible."""
    import numpy as np

    from harness.render import score
    h, w = src.shape[:2]
    k = max(1, -(-256 // max(w, h)))
    gap = np.full((h * k, 6, 3), 255, np.uint8)
    up = [np.repeat(np.repeat(a, k, axis=0), k, axis=1) for a in (src, cand, score.heatmap(src, cand))]
    return score.png_bytes(np.concatenate([up[0], gap, up[1], gap, up[2]], axis=1))


def _pipeline_tag(run: GateRun) -> str:
    prompt = run.record.workflow.example_prompt or {}
    kinds = " ".join(str((n or {}).get("class_type", "")) for n in prompt.values() if isinstance(n, dict))
    return "text-to-video" if "Video" in kinds or "Wan" in kinds else "text-to-image"


def _safe_dir(version: str, i: int) -> str:
    keep = "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in version)[:40].strip("._") or "version"
    return f"{i + 1}-comfyui-{keep}"


def _server(cf) -> str:
    return "embedded" if cf.embedded else ("running server" if cf.url else "started from a checkout")


@dataclass
class _Ctx:
    """What every section of one card reads (and the files / inputs it adds)."""
    runs: list[GateRun]
    label: str
    first: GateRun
    c0: object
    fname: str
    fmt: str
    versions: str
    files: dict[str, bytes] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)
    shown: int = 0

    @property
    def settings(self) -> dict:
        return self.first.record.workflow.settings

    @property
    def devices(self) -> list[str]:
        return sorted({f"{d.get('name')} ({d.get('type')})" for d in self.first.record.comfyui.devices})


def _check_options(runs: list[GateRun], label: str, base_model, pipeline_tag) -> None:
    first = runs[0]
    c0 = _cand(first, label)
    for r in runs[1:]:
        c = _cand(r, label)
        if c.sha256 != c0.sha256 or r.record.source.sha256 != first.record.source.sha256:
            raise InputError(f"the versions of this gate matrix checked different files for {label!r}", r.path)
    if base_model is not None:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
        try:
            validate_repo_id(base_model)
        except HFValidationError:
            raise UsageError(f"--base-model {base_model!r} is not a Hugging Face repo id (owner/name)") from None
    if pipeline_tag is not None and pipeline_tag not in PIPELINE_TAGS:
        raise UsageError(f"--pipeline-tag must be one of {', '.join(PIPELINE_TAGS)}")


def _head(x: _Ctx, title: str | None) -> list[str]:
    c0, first = x.c0, x.first
    all_pass = all(_cand(r, x.label).verdict == "pass" for r in x.runs)
    o = [f"# {_md(title or x.fname)}", "",
         f"**{x.fmt}** checkpoint for ComfyUI, made and checked with "
         f"quantgate. Render gate verdict: "
         f"**{'PASS' if all_pass else 'FAIL'}** on ComfyUI {_md(x.versions)}"
         f" (SSIM of every render against the unquantized source, in a real ComfyUI server).", "",
         "## Files", "",
         "| | file | sha256 |",
         "|---|---|---|",
         f"| this file | {_code(x.fname)} | {_code(c0.sha256)} |",
         f"| made from (source) | {_code(Path(first.record.source.path).name)} | "
         f"{_code(first.record.source.sha256)} |"]
    if c0.twin_sha256:
        o.append(f"| rendered as its dequantized twin | – | {_code(c0.twin_sha256)} |")
    o.append("")
    return o


def _format_gate(x: _Ctx) -> list[str]:
    v, c0, fname = x.c0.verify, x.c0, x.fname
    o = ["## Format gate (`quantgate verify`)", ""]
    if v is None or not v.available:
        o.append("Not run in this gate run (`--no-verify`): this card makes no claim about the file's layout "
                 "or its numbers against the source.")
    else:
        o += [f"**{'PASS' if v.passed else 'FAIL'}**", "", "```text",
              " ".join(v.summary.replace(c0.path, fname).split())]
        for f in v.findings[:40]:
            o.append(" ".join(f.replace(c0.path, fname).split())[:400])
        if len(v.findings) > 40:
            o.append(f"... {len(v.findings) - 40} more findings (gate.json)")
        o.append("```")
        if v.min_comfy:
            o.append("")
            o.append(f"Needs {'any ComfyUI' if v.min_comfy == 'any' else 'ComfyUI >= ' + _md(v.min_comfy)} "
                     "(from the file's layout).")
    o.append("")
    return o


def _render_gate(x: _Ctx) -> list[str]:
    label = x.label
    o = ["## Render gate per ComfyUI version", "",
         "| ComfyUI | server | rendered as | verdict | min SSIM | mean SSIM | threshold | renders |",
         "|---|---|---|---|---|---|---|---|"]
    for r in x.runs:
        c = _cand(r, label)
        ss = [s.ssim for s in r.record.renders if s.candidate == label and s.role == "candidate"
              and s.ssim is not None]
        cf = r.record.comfyui
        act = c.activations or {}
        how = c.rendered_as + (" + activations emulated" if act.get("emulated") else "")
        o.append(f"| {_md(cf.version)} | {_server(cf)} | {_md(how)} | "
                 f"**{c.verdict.upper()}** | {_f4(c.min_ssim)} | {_f4(_mean(ss))} | {c.threshold} | {len(ss)} |")
    o.append("")
    for r in x.runs:
        c = _cand(r, label)
        notes = [*c.reasons, *c.notes]
        if notes:
            o.append(f"ComfyUI {_md(r.record.comfyui.version)}:")
            o.append("")
            o.extend(f"- {_md(n.replace(x.c0.path, x.fname))}" for n in notes[:20])
            o.append("")
    ctl, rep = x.first.record.control, x.first.record.repeat
    o.append(f"Controls of the render itself (ComfyUI {_md(x.first.record.comfyui.version)}): another seed of the "
             f"source scores SSIM {ctl.ssim:.4f} (must be <= {ctl.max_ssim}: the render can tell models apart, "
             f"{'pass' if ctl.passed else 'FAIL'}); the source rendered twice scores {rep.ssim:.4f} "
             f"(must be >= {rep.min_ssim}, {'pass' if rep.passed else 'FAIL'}).")
    o.append("")
    return o


def _render_rows(x: _Ctx, r: GateRun, sub: str) -> list[str]:
    """One table row (and one triptych PNG) per candidate render of one run."""
    label, imgs, o = x.label, r.record.images, []
    for s in r.record.renders:
        if s.candidate != label or s.role != "candidate":
            continue
        key = f"{s.seed}/{s.width}x{s.height}"
        if key not in imgs.source or key not in imgs.candidates[label]:
            raise InputError(f"gate.json names no render image for seed {s.seed} {s.width}x{s.height}", r.path)
        a, b = r.image(imgs.source[key]), r.image(imgs.candidates[label][key])
        for arr in (a, b):
            if arr.shape[:2] != (s.height, s.width):
                raise InputError(f"render image for seed {s.seed} is {arr.shape[1]}x{arr.shape[0]}, the record "
                                 f"says {s.width}x{s.height}", r.path)
        rel = f"{IMAGES_DIR}/{sub}/seed{s.seed}_{s.width}x{s.height}.png"
        x.files[rel] = _triptych(a, b)
        x.inputs += [str(r.folder / imgs.source[key]), str(r.folder / imgs.candidates[label][key])]
        mark = "" if s.passed else " (below)"
        o.append(f"| {s.seed} | {s.width}x{s.height} | {_f4(s.ssim)}{mark} | {s.threshold} | "
                 f"![seed {s.seed} {s.width}x{s.height}: source, this file, difference]({rel}) |")
        x.shown += 1
    return o


def _renders(x: _Ctx) -> list[str]:
    o = ["## Renders", "",
         "Each image: **source | this file | difference** (mean |difference| over RGB, black -> red -> "
         "yellow -> white at 64 levels), upscaled without smoothing.", ""]
    for i, r in enumerate(x.runs):
        imgs = r.record.images
        if imgs is None or x.label not in imgs.candidates:
            o.append(f"ComfyUI {_md(r.record.comfyui.version)}: this gate folder holds no render images "
                     "(written by quantgate versions before the card existed); only the numbers above.")
            o.append("")
            continue
        o += [f"### ComfyUI {_md(r.record.comfyui.version)}", "",
              "| seed | size | SSIM | threshold | source \\| this file \\| difference |", "|---|---|---|---|---|"]
        o += _render_rows(x, r, _safe_dir(r.record.comfyui.version, i))
        o.append("")
    return o


def _activation_policy(act: dict) -> str:
    if act.get("emulated"):
        layers = ", ".join(f"{n} {k}" for k, n in sorted((act.get("layers") or {}).items()))
        return (f"declared by the file ({_md(layers)}); rendered twice: weight-only (min SSIM "
                f"{_f4(act.get('min_ssim_weight_only'))}) and with every quantized layer's input quantized as the "
                "native kernel would (comfy-kitchen reference functions); the verdict is taken on the emulated render")
    return ("weight-only render: activations in high precision (the gate found no quantized activation path "
            "declared in the file to emulate, or it ran with --no-emulation)")


def _how_rendered(x: _Ctx) -> list[str]:
    first = x.first
    wf, st = first.record.workflow, x.settings
    o = ["## How it was rendered", "", "| setting | value |", "|---|---|",
         f"| workflow | {_md(PurePosixPath(wf.name).name)}"
         + (f" (model node {_md(wf.model_node)})" if wf.model_node else "") + " |",
         f"| seeds | {', '.join(str(s) for s in first.record.seeds)} |",
         f"| sizes | {', '.join(f'{w}x{h}' for w, h in first.record.sizes)} |"]
    for k in ("steps", "cfg", "sampler", "scheduler"):
        if k in st:
            o.append(f"| {k} | {_md(st[k])} |")
    rest = {k: st[k] for k in sorted(st) if k not in ("steps", "cfg", "sampler", "scheduler")}
    if rest:
        o.append(f"| other settings | {_md(', '.join(f'{k} {val}' for k, val in rest.items()))} |")
    o.append(f"| activation policy | {_activation_policy(x.c0.activations or {})} |")
    if x.devices:
        o.append(f"| device | {_md(', '.join(x.devices))} |")
    o.append("")
    if wf.example_prompt:
        x.files["workflow.json"] = (json.dumps(wf.example_prompt, indent=1) + "\n").encode()
        o += ["The exact ComfyUI workflow (API format) of the first source render is "
              "[`workflow.json`](workflow.json); the other renders change only the seed, the size and the "
              "model file.", "",
              "<details><summary>workflow.json</summary>", "", "```json", json.dumps(wf.example_prompt, indent=1),
              "```", "", "</details>", ""]
    return o


def _versions(x: _Ctx) -> list[str]:
    tool = x.first.record.tool
    o = ["## Versions", "", "| component | version |", "|---|---|",
         f"| quantgate | {_md(tool.get('version', 'not recorded'))} |"]
    for r in x.runs:
        sysd = r.record.comfyui.system or {}
        o.append(f"| ComfyUI | {_md(r.record.comfyui.version)}"
                 f"{' (embedded)' if r.record.comfyui.embedded else ''}; its PyTorch "
                 f"{_md(sysd.get('pytorch_version') or 'not recorded')}, Python "
                 f"{_md(str(sysd.get('python_version') or 'not recorded').split(' ')[0])} |")
    o.append(f"| comfy-kitchen (format gate's reference) | {_md(tool.get('comfy_kitchen') or 'not recorded')} |")
    o.append(f"| torch (quantgate's process) | {_md(tool.get('torch') or 'not recorded')} |")
    o.append("")
    return o


def _limits(x: _Ctx) -> list[str]:
    first, st, v, act = x.first, x.settings, x.c0.verify, x.c0.activations or {}
    sizes = ", ".join(f"{w}x{h}" for w, h in first.record.sizes)
    o = ["## What this file does not claim", "",
         f"- **Not every setting.** The SSIM numbers hold for the renders above: {len(first.record.seeds)} seeds at "
         f"{sizes}, {st.get('steps', '?')} steps of {_md(st.get('sampler', '?'))}/{_md(st.get('scheduler', '?'))}, "
         "this workflow. Other resolutions, step counts, samplers, LoRAs, longer videos or other prompts were not "
         "rendered.",
         f"- **Not other ComfyUI versions.** Only ComfyUI {_md(x.versions)} was used (see the table for how).",
         "- **Not image quality in itself.** SSIM measures closeness to the unquantized source's render with the same "
         "seed, not prompt following or aesthetics; a source that renders badly renders badly here too."]
    if x.devices and all("(cpu)" in d for d in x.devices):
        o.append("- **Not GPU kernels.** The renders ran on a CPU. ComfyUI's native fp8 / NVFP4 GPU kernels were "
                 "not run" + ("; their activation quantization was emulated." if act.get("emulated") else
                              "; on a GPU those kernels compute with their own rounding."))
    if x.c0.rendered_as != "file":
        o.append("- **Not this file loaded by that ComfyUI.** It cannot load this format there, so its dequantized "
                 "twin (the same weights, stored plainly) was rendered instead.")
    if v is None or not v.available:
        o.append("- **No format gate.** The file's layout was not checked.")
    elif "numeric" not in (v.summary or ""):
        o.append("- **No numeric check against the source.** The format gate read the file without the source.")
    o.append("- **Not speed or memory.** Nothing here was timed against another file.")
    o.append("- **No license of its own.** The file inherits the source model's license and terms.")
    o.append("")
    o.append("---")
    o.append(f"Made by `quantgate card` from the gate record{'s' if len(x.runs) > 1 else ''} of this run "
             f"({x.shown} renders); the record holds every number above.")
    o.append("")
    return o


def build_card(gate_dir, candidate: str | None = None, *, base_model: str | None = None,
               pipeline_tag: str | None = None, license: str | None = None, title: str | None = None) -> Card:
    """Make the card of one file of a gate run (``candidate``: its label or file name; needed when the run
    checked several). Raises InputError / UsageError (one line) on a bad gate folder or option."""
    from huggingface_hub import ModelCard, ModelCardData
    gate_dir = Path(gate_dir)
    runs = load_gate_dir(gate_dir)
    label = _pick(runs, candidate)
    _check_options(runs, label, base_model, pipeline_tag)
    first = runs[0]
    c0 = _cand(first, label)
    fname = Path(c0.path).name
    fmt = c0.format
    tags = ["comfyui", "quantgate", fmt, "quantized"]
    tags.append("gguf" if fname.endswith(".gguf") else "safetensors")
    tags = list(dict.fromkeys(t for t in tags if t))
    meta = ModelCardData(base_model=base_model, pipeline_tag=pipeline_tag or _pipeline_tag(first), tags=tags,
                         license=license)
    front = meta.to_yaml()

    x = _Ctx(runs=runs, label=label, first=first, c0=c0, fname=fname, fmt=fmt,
             versions=", ".join(r.record.comfyui.version for r in runs),
             inputs=[str(r.path) for r in runs] + [c0.path, first.record.source.path])
    o = [*_head(x, title), *_format_gate(x), *_render_gate(x), *_renders(x), *_how_rendered(x), *_versions(x),
         *_limits(x)]
    readme = "---\n" + front + "\n---\n\n" + "\n".join(o)

    # offline validation: the Hub's own parser reads back exactly the metadata we meant
    try:
        parsed = ModelCard(readme, ignore_metadata_errors=False)
    except Exception as e:
        raise InputError(f"the card's metadata does not parse: {e}", gate_dir) from None
    want = meta.to_dict()
    got = parsed.data.to_dict()
    if got != want or "comfyui" not in (got.get("tags") or []) or fmt not in got.get("tags", []):
        raise InputError(f"the card's metadata reads back differently: {got} != {want}", gate_dir)
    return Card(readme=readme, files=x.files, inputs=x.inputs, label=label, data=got)


def write_card(card: Card, out_dir, *, force: bool = False) -> Path:
    """Write README.md, images/ and workflow.json into ``out_dir`` through quant.outputs: every path checked
    first (never an input, never a non-regular file, existing ones only with ``force``), README.md last."""
    from quant.outputs import check_output, write_bytes
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError("card folder exists and is not a folder", out)
    targets = [(out / rel, data) for rel, data in sorted(card.files.items())]
    targets.append((out / "README.md", card.readme.encode("utf-8")))
    for p, _ in targets:
        check_output(p, card.inputs, overwrite=force, what="card file")
    for p, data in targets:
        write_bytes(p, data, card.inputs, overwrite=force, what="card file")
    return out / "README.md"
