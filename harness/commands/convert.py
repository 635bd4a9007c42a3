"""quantgate convert: BF16/FP16/FP32 checkpoint -> ComfyUI FP8 (legacy or comfy_quant) or NVFP4."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from quant import formats, presets
from quant.errors import UsageError


FOREIGN_HELP = ("with --act-stats: use activation statistics recorded on another model (their model sha256 is "
                "not the source's; refused by default)")


def register(sub):
    p = sub.add_parser(
        "convert", help="quantize a checkpoint to fp8-legacy, fp8 or nvfp4",
        description="Quantize a BF16/FP16/FP32 diffusion checkpoint (a .safetensors file, an *.index.json, "
                    "a directory of shards, or a .gguf) into a file ComfyUI loads. Streams the tensors "
                    "with reads, quantization (CUDA streams or CPU worker threads) and writes overlapped, in host "
                    "memory bounded by 2x the largest tensor (QUANTGATE_PIPELINE=0: one tensor at a time); "
                    "writes to a temp file and renames it only when complete (Ctrl-C leaves nothing).",
        epilog="formats:\n"
               "  fp8-legacy  KJ 'scaled fp8': F8_E4M3 weights + <layer>.scale_weight F32[1] + scaled_fp8 marker\n"
               "  fp8         ComfyUI comfy_quant: F8_E4M3 + weight_scale F32[] + .comfy_quant + header metadata\n"
               "  nvfp4       ComfyUI/comfy-kitchen NVFP4 (ComfyUI >= 0.8), sensitive layers FP8 per preset\n"
               f"presets: {', '.join(presets.available())} (default: detected from the model's keys)\n"
               "exit codes: 0 written, 2 bad input/usage (no output file is left), 130 interrupted",
        formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("source", help="source checkpoint (.safetensors, *.index.json, shard dir, .gguf)")
    p.add_argument("-o", "--output", help="output .safetensors (default: beside the source, e.g. *_fp8mixed)")
    p.add_argument("--format", "-f", dest="target", choices=formats.TARGETS, default="fp8")
    p.add_argument("--preset", "-p", help="preset name or .toml path (see `quantgate plan`)")
    p.add_argument("--preset-from-gguf", metavar="FILE.gguf",
                   help="derive the preset from this GGUF's per-tensor types in one step "
                        "(= `quantgate preset from-gguf` + --preset; mapping options below)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N] for the quantize step")
    p.add_argument("--input-scales", metavar="JSON",
                   help='calibrated activation amax per layer {"layers": {"blocks.0.ffn.0": 12.5}}; '
                        "written as the input scale (" + ", ".join(
                            f"{f.name}: {f.input_scale_key} = amax/{f.full_scale:g}" for f in formats.FORMATS.values()) + ")")
    p.add_argument("--rounding", choices=("rtn", "learned", "gptq"), default="rtn",
                   help="rtn: round to nearest (default, bit-exact with comfy-kitchen). learned: per weight, the "
                        "grid point below or above chosen to minimise the layer's OUTPUT error on recorded "
                        "activations (sign-gradient rounding on the scales RTN writes). gptq: Hessian-aware "
                        "rounding (GPTQ error feedback, input column by column) on the same grids. learned and "
                        "gptq need --act-samples; every value stays on the format grid")
    p.add_argument("--scale-search", choices=("mse", "output"),
                   help="NVFP4: choose each 16-element block's e4m3 scale among amax/6's code and its "
                        "neighbours by the block's weight error (mse) or output error on --act-samples (output); "
                        "with rtn or gptq. The file stays standard (any block scale decodes)")
    p.add_argument("--damp", type=float, metavar="D", help="gptq: H += D x mean(diag H) I (default 0.1)")
    p.add_argument("--budget-bits", type=_bits, metavar="B",
                   help="nvfp4: re-decide every layer the preset quantizes -- NVFP4, FP8 or source precision -- "
                        "by measured error per byte (output error on --act-samples, else weight error) so the "
                        "quantized layers store at most B bits a weight (4.5 = all NVFP4, 5.5 = GGUF Q5_0's "
                        "size; 'preset': the preset's own size); the summary (--json) gives each layer's reason")
    p.add_argument("--act-stats", metavar="JSON",
                   help="activation STATISTICS (a JSON from `quantgate calibrate`: per-layer amax and percentiles "
                        "of |x|) -> every quantized layer gets input_scale = statistic x margin / the layer "
                        "format's full scale, and fp8 layers drop full_precision_matrix_mult (activations run "
                        "in fp8 on fp8 GPUs)")
    p.add_argument("--act-samples", metavar="FILE",
                   help="activation SAMPLES for --rounding learned / gptq, --scale-search output and --budget-bits "
                        "(a .safetensors of recorded input rows, one '<layer>.input' tensor [rows, in_features] "
                        "per Linear, written by quant.activations.samples.save_samples). Required by learned: "
                        "its data-free proxy measured worse than rtn on held-out activations (README)")
    p.add_argument("--calibration", metavar="FILE", action="append",
                   help="deprecated: a .json is taken as --act-stats, anything else as --act-samples")
    p.add_argument("--sample-rows", "--calib-rows", dest="sample_rows", type=int, default=4096, metavar="N",
                   help="learned: activation rows kept per layer (a seeded sample when the file has more; default 4096)")
    p.add_argument("--seed", type=int, default=0, help="learned: seed of the activation-row sample (default 0)")
    p.add_argument("--iters", type=int, metavar="N", help="learned: most optimiser steps per batch (default 200 on "
                                                          "CUDA, 50 on CPU; early stopping may end sooner)")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="learned: spread the layers over N devices, one worker process each (cuda:0..N-1 with "
                        "--device cuda; N CPU processes otherwise); this process alone writes the file")
    p.add_argument("--percentile", type=float, metavar="P",
                   help="with --act-stats: use this recorded percentile of |x| (e.g. 99.99) instead of amax")
    p.add_argument("--margin", type=float, default=1.0, metavar="M",
                   help="with --act-stats: multiply the statistic by M (default 1.0)")
    p.add_argument("--allow-foreign-calibration", action="store_true", help=FOREIGN_HELP)
    p.add_argument("--keep-full-precision-mm", action="store_true",
                   help="with --act-stats: fp8 layers keep full_precision_matrix_mult (input_scale stored, unused)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.add_argument("--comfy-version", metavar="X.Y.Z",
                   help="oldest ComfyUI the file must load correctly on (default: current, >= 0.4). For "
                        "fp8-legacy below 0.4.0 every Linear is quantized with a scale, because such ComfyUI "
                        "casts the Linears a preset keeps to fp8 without one")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from harness.commands.preset import add_mapping_args
    add_mapping_args(p)
    p.set_defaults(func=run)


def _bits(text: str):
    """--budget-bits: a number of bits a weight, or 'preset'."""
    if text == "preset":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of bits a weight or 'preset', not {text!r}") from None


def activation_files(args) -> tuple[str | None, str | None]:
    """(--act-stats, --act-samples), with the deprecated --calibration sorted in by file type (one line
    on stderr says which it was taken as)."""
    stats, samples = args.act_stats, args.act_samples
    for c in args.calibration or []:
        as_stats = str(c).lower().endswith(".json")
        opt = "--act-stats" if as_stats else "--act-samples"
        print(f"quantgate: --calibration is deprecated; {c} taken as {opt} (activation "
              f"{'statistics' if as_stats else 'samples'})", file=sys.stderr)
        if (stats if as_stats else samples) is not None:
            raise UsageError(f"--calibration {c}: {opt} is given already")
        if as_stats:
            stats = c
        else:
            samples = c
    return stats, samples


def run(args) -> int:
    from quant.convert import ActivationChoice, ConvertRequest, OutputChoice, PlanChoice, RoundingChoice
    from quant.convert import run as convert
    from quant.device import Device
    mapping = None
    if args.preset_from_gguf:
        from harness.commands.preset import mapping_from
        mapping = mapping_from(args)
    stats, samples = activation_files(args)
    req = ConvertRequest(
        Path(args.source), formats.get(args.target), Device.of(args.device),
        plan=PlanChoice(args.preset, args.preset_from_gguf, mapping, args.comfy_version, args.budget_bits),
        rounding=RoundingChoice(args.rounding, samples, args.seed, args.iters, args.gpus, args.sample_rows,
                                args.scale_search, args.damp),
        activations=ActivationChoice(stats, args.percentile, args.margin, args.input_scales,
                                     args.keep_full_precision_mm, args.allow_foreign_calibration),
        output=OutputChoice(args.output, args.force, not args.quiet and sys.stderr.isatty()))
    s = convert(req)
    if args.json:
        print(json.dumps(s.as_dict(), indent=1))
    else:
        print("converted")
        print(s.table())
    return 0
