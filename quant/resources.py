"""Data files quantgate ships: ``presets/`` and ``golden/`` live at the top of the repository (the
founders' layout); a built wheel carries copies under ``quant/_data/`` (setup.py's build step).
:func:`data_path` finds them either way, so an installed ``quantgate`` works from any directory."""
from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
PACKAGED = _HERE / "_data"            # in an installed wheel
CHECKOUT = _HERE.parent               # the repository root, when running from a checkout
SHIPPED = ("presets", "golden")       # top-level folders the wheel carries


def data_path(name: str, *parts: str) -> Path:
    """``<data folder name>/<parts...>``: the wheel's copy when installed, else the checkout's folder."""
    if name not in SHIPPED:
        raise KeyError(f"{name!r} is not a shipped data folder ({', '.join(SHIPPED)})")
    base = PACKAGED / name if (PACKAGED / name).is_dir() else CHECKOUT / name
    return base.joinpath(*parts)
