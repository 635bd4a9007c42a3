"""quantgate formats: the format facts, printed from the format registry (quant.formats)."""
from quant import formats


def register(sub):
    p = sub.add_parser("formats", help="describe the output formats (tensors, dtypes, shapes, ComfyUI versions)")
    p.set_defaults(func=run)


def run(args) -> int:
    print(formats.describe())
    return 0
