"""quantgate convert: BF16/FP16/FP32 checkpoint -> ComfyUI FP8 (legacy or comfy_quant) or NVFP4."""
from __future__ import annotations

import json
import sys

from quant import formats, presets
from quant.errors import UsageError


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
    p.add_argument("--rounding", choices=("rtn", "learned"), default="rtn",
                   help="rtn: round to nearest (default, bit-exact with comfy-kitchen). learned: per weight, the "
                        "grid point below or above chosen to minimise the layer's OUTPUT error on calibration "
                        "activations (sign-gradient rounding on the scales RTN writes; every value stays on the "
                        "format grid)")
    p.add_argument("--calibration", metavar="FILE", action="append",
                   help="calibration data, by file type (repeatable, one of each): a .json from `quantgate calibrate` "
                        "-> every quantized layer gets input_scale = statistic x margin / the layer format's full "
                        "scale, and fp8 layers drop full_precision_matrix_mult (activations run in fp8 on fp8 GPUs); "
                        "a .safetensors with --rounding learned -> recorded input activations, one '<layer>.input' "
                        "tensor [rows, in_features] per Linear (without it learned rounding uses a data-free proxy, "
                        "the weight's own W^T W plus an identity share: measured to LOSE quality on activations "
                        "unrelated to the weights, README)")
    p.add_argument("--calib-rows", type=int, default=4096, metavar="N",
                   help="learned: activation rows kept per layer (a seeded sample when the file has more; default 4096)")
    p.add_argument("--seed", type=int, default=0, help="learned: seed of the calibration-row sample (default 0)")
    p.add_argument("--iters", type=int, metavar="N", help="learned: most optimiser steps per batch (default 200 on "
                                                          "CUDA, 50 on CPU; early stopping may end sooner)")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="learned: spread the layers over N devices, one worker process each (cuda:0..N-1 with "
                        "--device cuda; N CPU processes otherwise); this process alone writes the file")
    p.add_argument("--percentile", type=float, metavar="P",
                   help="with --calibration: use this recorded percentile of |x| (e.g. 99.99) instead of amax")
    p.add_argument("--margin", type=float, default=1.0, metavar="M",
                   help="with --calibration: multiply the statistic by M (default 1.0)")
    p.add_argument("--allow-foreign-calibration", action="store_true",
                   help="with --calibration: use a calibration recorded on another model (its model sha256 is not "
                        "the source's; refused by default)")
    p.add_argument("--keep-full-precision-mm", action="store_true",
                   help="with --calibration: fp8 layers keep full_precision_matrix_mult (input_scale stored, unused)")
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


def run(args) -> int:
    mapping = None
    if args.preset_from_gguf:
        from harness.commands.preset import mapping_from
        mapping = mapping_from(args)
    from quant.convert import convert
    acts = stats = None
    for c in args.calibration or []:
        if str(c).lower().endswith(".json"):
            if stats is not None:
                raise UsageError("--calibration: one calibration JSON at most")
            stats = c
        else:
            if acts is not None:
                raise UsageError("--calibration: one activations .safetensors at most")
            acts = c
    s = convert(args.source, args.output, args.target, args.preset, device=args.device, force=args.force,
                progress=not args.quiet and sys.stderr.isatty(), input_scales=args.input_scales,
                comfy_version=args.comfy_version, preset_from_gguf=args.preset_from_gguf, gguf_mapping=mapping,
                rounding=args.rounding, calibration=acts, seed=args.seed, learned_iters=args.iters,
                gpus=args.gpus, calib_rows=args.calib_rows, activation_stats=stats, percentile=args.percentile,
                margin=args.margin, keep_fpmm=args.keep_full_precision_mm,
                allow_foreign_calibration=args.allow_foreign_calibration)
    if args.rounding == "learned" and not acts:
        print("note: learned rounding without --calibration used the data-free proxy (the weights' own W^T W); "
              "on activations unrelated to the weights it measured worse than rtn (README)", file=sys.stderr)
    if args.json:
        print(json.dumps(s.as_dict(), indent=1))
    else:
        print("converted")
        print(s.table())
    return 0
