"""``QGCheckModel``: quantgate's format gate on a model file from ComfyUI's models folder, verdict as text.

The file is chosen from ComfyUI's own lists (``diffusion_models`` and ``checkpoints``, .safetensors and .gguf
only: nothing here ever opens a pickle), so the node reads only what the server already offers. Without a
source it runs the header rules and the no-source statistics; with a source every quantized layer is
dequantized by comfy-kitchen and compared with it (``quantgate verify CKPT --source SRC``). An unreadable file is
a FAIL verdict with quantgate's one-line reason, not a crashed prompt.
"""
from __future__ import annotations

import os

FOLDERS = ("diffusion_models", "checkpoints")
EXTENSIONS = (".safetensors", ".gguf")
NO_SOURCE = "(none: header rules + statistics)"
MAX_LINES = 40


def _choices() -> list[str]:
    import folder_paths
    out = []
    for folder in FOLDERS:
        try:
            names = folder_paths.get_filename_list(folder)
        except Exception:               # a ComfyUI without this folder kind
            continue
        out += [f"{folder}/{n}" for n in names if n.lower().endswith(EXTENSIONS)]
    return out


def _path(choice: str) -> str | None:
    import folder_paths
    folder, _, name = choice.partition("/")
    if folder not in FOLDERS or not name:
        return None
    return folder_paths.get_full_path(folder, name)


def _stamp(choice: str) -> str:
    p = _path(choice) if choice != NO_SOURCE else None
    try:
        st = os.stat(p) if p else None
    except OSError:
        st = None
    return f"{choice}:{st.st_size}:{st.st_mtime_ns}" if st else choice


def _versions() -> str:
    from importlib import metadata
    out = []
    for dist in ("quantgate", "comfy-kitchen"):
        try:
            out.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{dist} not installed")
    return ", ".join(out)


def check(model: str, source: str, strict: bool = False) -> tuple[str, bool]:
    """The verdict text and whether the file passes."""
    head = f"quantgate format gate: {model}"
    try:
        from harness.verify import verify
        from quant.errors import QuantgateError
    except ImportError as e:
        return (f"{head}\nERROR: quantgate is not installed in this ComfyUI's Python ({e}); "
                "install it with: python -m pip install quantgate"), False
    path = _path(model)
    if not path or not os.path.isfile(path):
        return f"{head}\nFAIL: the file is not in ComfyUI's models folder any more", False
    src = None
    if source and source != NO_SOURCE:
        src = _path(source)
        if not src or not os.path.isfile(src):
            return f"{head}\nFAIL: the source {source} is not in ComfyUI's models folder any more", False
        if os.path.realpath(src) == os.path.realpath(path):
            return f"{head}\nFAIL: the source is the file itself; choose the unquantized file it was made from", False
    try:
        rep = verify(path, source=src, strict=bool(strict))
    except QuantgateError as e:
        return f"{head}\nFAIL: unreadable: {str(e).replace(path, model)}", False
    lines = [ln.replace(path, model).replace(src or "\0", source) for ln in rep.lines()]
    summary = lines.pop()
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES] + [f"... {len(lines) - MAX_LINES} more findings (quantgate verify shows all)"]
    verdict = "PASS" if rep.passed else "FAIL"
    out = [f"{head}", f"{verdict}" + ("" if src else " (no source selected: no numeric check)"), *lines, summary,
           f"source: {source if src else 'none'}", _versions()]
    return "\n".join(out), bool(rep.passed)


class QGCheckModel:
    @classmethod
    def INPUT_TYPES(cls):
        files = _choices()
        return {"required": {
            "model": (files, {"tooltip": "the quantized file to check (diffusion_models/ or checkpoints/)"}),
            "source": ([NO_SOURCE, *files], {"tooltip": "the unquantized file it was made from: enables the "
                                                        "numeric check (every layer dequantized and compared)"}),
            "strict": ("BOOLEAN", {"default": False, "tooltip": "warnings fail the check too"}),
        }}

    RETURN_TYPES = ("STRING", "BOOLEAN")
    RETURN_NAMES = ("verdict", "passed")
    OUTPUT_NODE = True
    FUNCTION = "run"
    CATEGORY = "quantgate"
    DESCRIPTION = ("quantgate's format gate on a model file: header rules, and with a source the numeric check "
                   "through comfy-kitchen. Shows the verdict on the node.")

    @classmethod
    def IS_CHANGED(cls, model, source, strict=False):
        return f"{_stamp(model)}|{_stamp(source)}|{strict}"     # re-check when a file is replaced

    def run(self, model, source, strict=False):
        text, passed = check(model, source, strict)
        return {"ui": {"text": [text]}, "result": (text, passed)}


NODE_CLASS_MAPPINGS = {"QGCheckModel": QGCheckModel}
NODE_DISPLAY_NAME_MAPPINGS = {"QGCheckModel": "quantgate: check model file"}
