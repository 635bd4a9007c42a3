"""quantgate as a user gets it: the wheel built from a copy of the checkout, installed offline (--no-deps) into a
fresh venv that borrows an existing environment's packages (this one's, or the upstream ComfyUI's) through a
.pth that runs ``site.addsitedir`` (so that environment's own .pth files apply too). Nothing is downloaded."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".dev", ".benchmarks",
                                ".pytest_cache", "demo-out", "tests", "benchmarks", "*.safetensors", "nodepack")


def clean_env() -> dict:
    """This environment without PYTHONPATH: ``./qg`` puts the checkout on it, and a checkout holding a
    hand-built ``quantgate.egg-info`` would then make pip believe quantgate is already installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QUANTGATE_DEBUG")}


def run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 600)
    kw.setdefault("env", clean_env())
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert r.returncode == 0, f"{cmd}: {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def build_wheel(work: Path) -> Path:
    src = work / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE, symlinks=True)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", work / "dist", src])
    (whl,) = (work / "dist").glob("quantgate-*.whl")
    return whl


def venv_with_wheel(dest: Path, wheel: Path, base_python: str | None = None) -> Path:
    """A venv at ``dest`` over ``base_python``'s environment (default: this one) with the wheel installed;
    returns its python."""
    base_python = base_python or sys.executable
    run([base_python, "-m", "venv", "--without-pip", dest])
    py = dest / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(run([py, "-c", code]).stdout.strip())
    base_purelib = run([base_python, "-c", code]).stdout.strip()
    (purelib / "_quantgate_test_base.pth").write_text(f"import site; site.addsitedir({base_purelib!r})\n")
    run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", wheel])
    return py
