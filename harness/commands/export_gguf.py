"""quantgate export-gguf: a GGUF as a dequantized .safetensors (for loaders that cannot read GGUF)."""
from __future__ import annotations

import argparse
import json
import sys


def register(sub):
    p = sub.add_parser(
        "export-gguf", help="write a GGUF's tensors, dequantized by gguf-py, as a .safetensors",
        description="Dequantize every tensor of FILE.gguf with gguf-py (any type it decodes: Q4_0..Q8_0, K-quants, "
                    "IQ quants, F16/BF16/F32) and write them, under the GGUF's names and logical shapes (5-D Wan "
                    "patch_embedding included), to a .safetensors that any loader reads. Atomic: the output appears "
                    "only when complete; the input is never modified.",
        epilog="example:\n  quantgate export-gguf Wan2.2-TI2V-5B-Q4_0.gguf -o Wan2.2-TI2V-5B-Q4_0-dequant.safetensors\n"
               "exit codes: 0 written, 2 bad input/usage (nothing written), 130 interrupted",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("gguf", metavar="FILE.gguf")
    p.add_argument("-o", "--output", required=True, metavar="FILE.safetensors")
    p.add_argument("--dtype", default="keep", choices=["keep", "f32", "f16", "bf16"],
                   help="keep (default): float tensors as stored, quantized ones as gguf-py's exact float32 "
                        "dequantization; or cast everything to f32/f16/bf16")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.set_defaults(func=run)


def run(args) -> int:
    from quant.gguf.export import export_safetensors
    s = export_safetensors(args.gguf, args.output, args.dtype, force=args.force,
                           progress=sys.stderr.isatty() and not args.json)
    if args.json:
        print(json.dumps(s.as_dict(), indent=1))
    else:
        print(f"wrote {s.output}: {s.tensors} tensors ({', '.join(f'{v} {k}' for k, v in s.types.items())} in the GGUF), "
              f"{s.bytes_out / 1e6:,.1f} MB")
    return 0
