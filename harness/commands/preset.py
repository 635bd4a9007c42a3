"""quantgate preset from-gguf: derive a preset from the per-tensor GGML types of a GGUF."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from quant.errors import UsageError


def add_mapping_args(p) -> None:
    g = p.add_argument_group("GGUF -> precision mapping")
    g.add_argument("--nvfp4-max-bits", type=int, default=4, metavar="N",
                   help="quantized GGUF tensors of at most N bits become NVFP4 (default 4: Q4_0, Q4_1, Q4_K; "
                        "5 also takes Q5_0/Q5_1/Q5_K)")
    g.add_argument("--fp8-max-bits", type=int, default=8, metavar="N",
                   help="wider quantized tensors of at most N bits become FP8 (default 8: Q5..Q8); wider stay")
    g.add_argument("--keep-edge-blocks", type=int, default=0, metavar="N",
                   help="keep the first and last N transformer blocks in source precision (default 0)")


def mapping_from(args):
    from quant.gguf.model import Mapping
    m = Mapping(args.nvfp4_max_bits, args.fp8_max_bits, args.keep_edge_blocks)
    m.check()
    return m


def register(sub):
    p = sub.add_parser("preset", help="make presets (from a GGUF's per-tensor types)",
                       description="Preset tools. `preset from-gguf` reads a GGUF's per-tensor GGML types and "
                                   "writes a preset TOML that `convert --preset` and `plan --preset` take.")
    ps = p.add_subparsers(dest="preset_command", metavar="SUBCOMMAND")
    f = ps.add_parser(
        "from-gguf", help="derive a preset from a GGUF's per-tensor types",
        description="Write a preset whose rules give every tensor the precision its GGML type in FILE.gguf maps to: "
                    "F32/F16/BF16 stay in source precision, quantized types of <= --nvfp4-max-bits bits become NVFP4, "
                    "<= --fp8-max-bits become FP8 (under --format fp8 both are fp8). The preset records the GGUF's "
                    "file name, sha256 and counts per type. With --source, the GGUF is matched against that "
                    "checkpoint first and every tensor found on one side only is reported.",
        epilog="example (the recipe of jorismak/convert_nvfp4 on QuantStack's Q5_K_M):\n"
               "  quantgate preset from-gguf Wan2.2-TI2V-5B-Q5_K_M.gguf --nvfp4-max-bits 5 -o wan5b-q5km.toml\n"
               "  quantgate convert wan2.2_ti2v_5B_fp16.safetensors --format nvfp4 --preset wan5b-q5km.toml\n"
               "exit codes: 0 written, 2 bad input/usage (nothing written)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("gguf", metavar="FILE.gguf")
    f.add_argument("-o", "--output", required=True, metavar="NAME.toml", help="preset file to write (atomically)")
    f.add_argument("--name", help="preset name (default: gguf-<file stem>)")
    f.add_argument("--source", metavar="SRC", help="check the GGUF against this checkpoint's tensors first")
    add_mapping_args(f)
    f.add_argument("--force", action="store_true", help="overwrite an existing preset file")
    f.add_argument("--json", action="store_true", help="print a JSON summary")
    f.set_defaults(func=run_from_gguf)
    p.set_defaults(func=lambda a: (_ for _ in ()).throw(UsageError("preset needs a subcommand: from-gguf")))


def run_from_gguf(args) -> int:
    from quant import presets
    from quant.gguf import model as gguf_model
    out = Path(args.output)
    gg = Path(args.gguf)
    if out.suffix != ".toml":
        raise UsageError("the preset file name must end in .toml (that is how --preset tells a file from a name)", out)
    inputs = [gg] + ([Path(args.source)] if args.source else [])
    from quant.outputs import check_output
    check_output(out, inputs, overwrite=args.force, what="preset")     # the one output check
    mapping = mapping_from(args)
    model = gguf_model.read(gg)
    shapes = None
    report = None
    if args.source:
        from quant.sources import open_source
        with open_source(args.source) as src:
            shapes = {n: src.info(n).shape for n in src.keys()}
        report = gguf_model.match(model, shapes)
    pr = gguf_model.derive_preset(model, mapping, name=args.name, source_shapes=shapes)
    text = gguf_model.preset_toml(pr)

    def reads_back(data: bytes):
        """What convert will read: valid TOML of the same rules -- checked BEFORE the file appears, so an
        unreadable preset (a DEL or a lone surrogate in a name) is never left behind (issue 20)."""
        back = presets.from_text(data, out)
        if back.rules != pr.rules:
            raise UsageError("internal error: the preset would not read back to the same rules; not written", out)
    from quant.outputs import write_text
    write_text(out, text, inputs, overwrite=args.force, what="preset", validate=reads_back)
    actions = {}
    for r in pr.rules:
        k = r.action if r.action == "keep" else (r.nvfp4 or "nvfp4")
        actions[k] = actions.get(k, 0) + len(r.match)
    summary = {"preset": str(out), "name": pr.name, "gguf": str(gg), "sha256": pr.provenance["sha256"],
               "architecture": model.arch, "file_type": model.file_type, "counts": model.counts(),
               "nvfp4_tensors_under_nvfp4": actions.get("nvfp4", 0), "fp8_tensors_under_nvfp4": actions.get("fp8", 0),
               "kept": actions.get("keep", 0), "match": report.as_dict() if report else None}
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    print(f"wrote {out} (preset {pr.name!r})")
    print(f"  from   {gg.name}  sha256 {summary['sha256'][:16]}...  arch {model.arch}  {model.file_type}")
    print("  types  " + ", ".join(f"{v} {k}" for k, v in model.counts().items()))
    print(f"  under --format nvfp4: {summary['nvfp4_tensors_under_nvfp4']} nvfp4, "
          f"{summary['fp8_tensors_under_nvfp4']} fp8, {summary['kept']} kept")
    if report:
        for line in report.lines():
            print("  " + line)
    return 0
