"""quantgate plan: show the per-tensor decisions of a preset without converting."""
from __future__ import annotations

import json

from quant import formats, presets
from quant.errors import UsageError
from quant.convert import make_plan
from quant.sources import open_source


def register(sub):
    p = sub.add_parser("plan", help="print the per-tensor decisions (keep/fp8/nvfp4) of a preset",
                       description="Read only the headers of SRC and print what `convert` would do with every "
                                   "tensor under the preset: keep, fp8 or nvfp4, and why.")
    p.add_argument("source")
    p.add_argument("--preset", "-p", help=f"one of {', '.join(presets.available())} or a .toml (default: detected)")
    p.add_argument("--preset-from-gguf", metavar="FILE.gguf",
                   help="derive the preset from this GGUF's per-tensor types (see `quantgate preset from-gguf`)")
    p.add_argument("--format", "-f", dest="target", choices=formats.TARGETS, default="nvfp4")
    p.add_argument("--comfy-version", metavar="X.Y.Z",
                   help="oldest ComfyUI the file must load correctly on (default: current, >= 0.4). For "
                        "fp8-legacy below 0.4.0 every Linear is quantized with a scale, because such ComfyUI "
                        "casts the Linears a preset keeps to fp8 without one")
    from harness.commands.convert import _bits
    p.add_argument("--budget-bits", type=_bits, metavar="B",
                   help="nvfp4: re-decide the quantized layers (NVFP4 / FP8 / source precision) by measured error "
                        "per byte as `convert --budget-bits` does -- reads the weights; each layer's reason says why")
    p.add_argument("--act-samples", metavar="FILE", help="with --budget-bits: measure output error on these "
                                                          "recorded activations (else weight error)")
    p.add_argument("--scale-search", choices=("mse", "output"), help="with --budget-bits: as convert's")
    p.add_argument("--json", action="store_true")
    p.add_argument("--all", action="store_true", help="list kept tensors too (default: summary of them)")
    from harness.commands.preset import add_mapping_args
    add_mapping_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    with open_source(args.source) as src:
        preset = args.preset
        if args.preset_from_gguf:
            from harness.commands.preset import mapping_from
            from quant.gguf import model as gguf_model
            if preset:
                raise UsageError("--preset and --preset-from-gguf exclude each other")
            preset = gguf_model.derive_preset(gguf_model.read(args.preset_from_gguf), mapping_from(args),
                                              source_shapes={n: src.info(n).shape for n in src.keys()})
        plan = make_plan(src, preset, args.target, args.comfy_version)
        if args.budget_bits is not None:
            _budget(args, src, plan)
    has_gguf = any(d.gguf for d in plan.decisions)
    if args.json:
        print(json.dumps({"preset": plan.preset.name, "format": plan.target, "counts": plan.by_action(),
                          "provenance": plan.preset.provenance or None,
                          "tensors": [{"name": d.name, "dtype": d.dtype, "shape": list(d.shape), "action": d.action,
                                       "gguf": d.gguf or None, "reason": d.reason} for d in plan.decisions]}, indent=1))
        return 0
    w = max((len(d.name) for d in plan.decisions), default=10)
    print(f"preset {plan.preset.name} -> {plan.target}: " + ", ".join(f"{v} {k}" for k, v in plan.by_action().items()))
    prov = plan.preset.provenance or {}
    if prov.get("gguf_file"):
        print(f"derived from {prov['gguf_file']} (sha256 {str(prov.get('sha256', ''))[:16]}...)")
    gcol = f"{'gguf':<6} " if has_gguf else ""
    print(f"{'tensor':<{w}}  {'dtype':<6} {'shape':<18} {gcol}action  reason")
    kept = 0
    for d in plan.decisions:
        if d.action == "keep" and not args.all and not d.reason.startswith("--budget-bits"):
            kept += 1
            continue
        g = f"{d.gguf or '-':<6} " if has_gguf else ""
        print(f"{d.name:<{w}}  {d.dtype:<6} {str(list(d.shape)):<18} {g}{d.action:<7} {d.reason}")
    if kept:
        print(f"... {kept} tensors kept in source precision (--all lists them)")
    return 0


def _budget(args, src, plan) -> None:
    """`--budget-bits`: the same allocation convert makes (quant.budget.apply), decisions rewritten in place."""
    from pathlib import Path

    from quant import budget
    from quant.convert import ConvertRequest, PlanChoice, RoundingChoice
    req = ConvertRequest(Path(args.source), formats.get(args.target),
                         plan=PlanChoice(budget_bits=args.budget_bits, comfy_version=args.comfy_version),
                         rounding=RoundingChoice(samples=args.act_samples, scale_search=args.scale_search))
    req.check()
    budget.apply(plan, src, req)
