"""quantgate formats: the format facts, printed from the format registry (quant.formats)."""
from quant import formats


def register(sub):
    p = sub.add_parser("formats", help="describe the output formats (tensors, dtypes, shapes, ComfyUI versions)")
    p.add_argument("--markdown", action="store_true", help="print the README's formats table")
    p.set_defaults(func=run)


def run(args) -> int:
    print(formats.markdown_table() if args.markdown else formats.describe())
    return 0
