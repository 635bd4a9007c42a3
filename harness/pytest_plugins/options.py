"""Command-line options shared by the format- and render-gate pytest plugins (defined once here).

Relative paths given to the gates' options are resolved against the directory the user ran from
(``QUANTGATE_CALLER_DIR``, set by ./qg, which runs pytest from the checkout), else pytest's own."""
import os
from pathlib import Path

PATH_OPTIONS = ("checkpoint", "source", "reference", "render_out", "workflow", "comfy_root", "comfy_python")


def pytest_addoption(parser):
    g = parser.getgroup("quantgate gates")
    g.addoption("--checkpoint", action="store", default=None, metavar="CKPT",
                help="checkpoint to check (pytest -m format / -m render): file, index.json or shard dir")
    g.addoption("--source", action="store", default=None, metavar="SRC",
                help="unquantized source checkpoint it was made from")


def pytest_configure(config):
    base = Path(os.environ.get("QUANTGATE_CALLER_DIR") or config.invocation_params.dir)
    for name in PATH_OPTIONS:
        v = getattr(config.option, name, None)
        if not isinstance(v, str) or not v or os.path.isabs(v):
            continue
        if name == "reference" and not (base / v).exists():
            continue                    # a golden manifest name such as kj/Wan2_2-..., not a path
        setattr(config.option, name, str(base / v))
