"""A plain ``pip install quantgate`` (no extras) must run ``convert``: every third-party module that quant/ and the
CLI's modules import when they load is a base dependency in pyproject.toml. (The wheel of session 4 was installed
without extras and ``quantgate convert`` died in a traceback: quant.inputs imports pydantic, which only the
``comfy`` extra listed.) Lazily imported modules (inside functions: comfy_kitchen, triton, gguf, ...) and the
pytest plugins, which only pytest loads, are not counted."""
import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIST_OF = {"yaml": "pyyaml", "PIL": "pillow", "skimage": "scikit-image"}


def _base_deps() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~ \[;]", d, maxsplit=1)[0].strip().lower().replace("_", "-") for d in deps}


def _module_level_imports(root: Path, skip: tuple[str, ...]) -> dict[str, list[str]]:
    std = set(sys.stdlib_module_names)
    out: dict[str, list[str]] = {}
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if rel.startswith(skip):
            continue
        for node in ast.parse(p.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for m in names:
                top = m.split(".")[0]
                if top not in std and top not in ("quant", "harness", "__future__"):
                    out.setdefault(top, []).append(rel)
    return out


def test_every_module_level_import_of_quant_and_harness_is_a_base_dependency():
    base = _base_deps()
    found = _module_level_imports(ROOT / "quant", ())
    for k, v in _module_level_imports(ROOT / "harness", ("harness/pytest_plugins/",)).items():
        found.setdefault(k, []).extend(v)
    assert "torch" in found and "pydantic" in found            # the scan sees the imports it is about
    missing = {m: files[:3] for m, files in found.items() if DIST_OF.get(m, m).lower().replace("_", "-") not in base}
    assert not missing, f"imported at module level but not a base dependency in pyproject.toml: {missing}"
