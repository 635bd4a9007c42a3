"""quantgate formats: the format facts (from quant.spec, the single source of truth)."""
from quant import spec


def register(sub):
    p = sub.add_parser("formats", help="describe the output formats (tensors, dtypes, shapes, ComfyUI versions)")
    p.set_defaults(func=run)


def run(args) -> int:
    print(spec.describe())
    return 0
