"""quantgate's ComfyUI node pack: put this folder into ``ComfyUI/custom_nodes/`` (as ``quantgate``) and
``pip install quantgate`` into ComfyUI's Python (``requirements.txt``; ComfyUI-Manager / ``comfy node install``
do both).

* ``QGCheckModel`` (``check.py``): quantgate's format gate on a model file from ComfyUI's models folder -- the
  header rules, and with a source selected, every quantized layer dequantized by comfy-kitchen and compared
  with the source -- its verdict shown as text on the node (``web/quantgate_verdict.js``) and returned as a
  STRING and a BOOLEAN.
* quantgate's own nodes (the ones its render gate installs: seeded random conditioning, activation calibration
  and emulation, the memory route), loaded from the installed quantgate package, so the pack and quantgate
  never disagree.
"""
import importlib.util
import logging
import sys
from pathlib import Path

from .check import NODE_CLASS_MAPPINGS as _CHECK, NODE_DISPLAY_NAME_MAPPINGS as _CHECK_NAMES

NODE_CLASS_MAPPINGS = dict(_CHECK)
NODE_DISPLAY_NAME_MAPPINGS = dict(_CHECK_NAMES)
WEB_DIRECTORY = "./web"


def _quantgate_node_files():
    try:
        spec = importlib.util.find_spec("harness")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "custom_nodes"
    return sorted(p for p in d.glob("*.py") if not p.name.startswith("_")) if d.is_dir() else None


def _load_quantgate_nodes():
    files = _quantgate_node_files()
    if files is None:
        logging.warning("quantgate node pack: quantgate is not installed in this Python (%s); only QGCheckModel is "
                        "available, and it will say so. Install it: %s -m pip install quantgate",
                        sys.executable, sys.executable)
        return
    for f in files:
        name = f"quantgate_nodepack_{f.stem}"
        try:
            spec = importlib.util.spec_from_file_location(name, f)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
        except Exception as e:        # one broken file must not take the pack down
            logging.warning("quantgate node pack: %s failed to load: %s: %s", f.name, type(e).__name__, e)
            continue
        NODE_CLASS_MAPPINGS.update(getattr(mod, "NODE_CLASS_MAPPINGS", None) or {})
        NODE_DISPLAY_NAME_MAPPINGS.update(getattr(mod, "NODE_DISPLAY_NAME_MAPPINGS", None) or {})


_load_quantgate_nodes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
