"""`pip install .` (non-editable) gives a `quantgate` that works from any directory: the wheel carries
presets/, golden/, workflows, policy and custom nodes. Built from a copy of the checkout, installed
offline (--no-deps) into a fresh venv that borrows this environment's dependencies through a .pth."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".dev", ".benchmarks",
                                ".pytest_cache", "demo-out", "tests", "benchmarks", "*.safetensors")


def _run(cmd, **kw):
    # without PYTHONPATH: ./qg puts the checkout on it, and a hand-built quantgate.egg-info there makes pip
    # skip the install ("already installed"); the commands under test get the same clean environment
    kw.setdefault("env", {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QUANTGATE_DEBUG")})
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, f"{cmd}: {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    d = tmp_path_factory.mktemp("install")
    src = d / "src"
    shutil.copytree(ROOT, src, ignore=IGNORE, symlinks=True)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", d / "dist", src])
    (whl,) = (d / "dist").glob("quantgate-*.whl")
    env_dir = d / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    py = env_dir / "bin" / "python"
    purelib = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the dependencies (torch, comfy-kitchen, ...) come from this environment, never the checkout
    (purelib / "_quantgate_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", "-q", whl])
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QUANTGATE_DEBUG")}
    work = d / "elsewhere"
    work.mkdir()
    return {"whl": whl, "py": py, "bin": env_dir / "bin" / "quantgate", "env": env, "cwd": work}


def test_wheel_carries_the_data(installed):
    names = set(zipfile.ZipFile(installed["whl"]).namelist())
    for f in ("quant/_data/presets/wan22-ti2v-5b.toml", "quant/_data/presets/smart.toml",
              "quant/_data/golden/kj/Wan2_2-TI2V-5B_fp8_e4m3fn_scaled_KJ.json",
              "quant/_data/golden/render-wan21-t2v-thin.json", "harness/policy.toml",
              "harness/workflows/wan21_t2v_smoke.json", "harness/custom_nodes/quantgate_nodes.py"):
        assert f in names, f
    presets_in_repo = {p.name for p in (ROOT / "presets").glob("*.toml")}
    assert presets_in_repo == {Path(n).name for n in names if n.startswith("quant/_data/presets/")}


def test_installed_quantgate_plans_converts_and_verifies_from_another_directory(installed):
    run = dict(env=installed["env"], cwd=installed["cwd"])
    where = _run([installed["py"], "-c", "import quant, harness; print(quant.__file__); print(harness.__file__)"],
                 **run).stdout.split()
    assert all(str(installed["py"].parent.parent) in w for w in where), where     # the wheel's code, not the checkout
    _run([installed["py"], "-c", "from harness.fixtures.synth import make_model; "
                                 "make_model('wan22-ti2v-5b-thin', 'model_bf16.safetensors', seed=1)"], **run)
    plan = json.loads(_run([installed["bin"], "plan", "model_bf16.safetensors", "--format", "nvfp4", "--json"],
                           **run).stdout)
    assert plan["preset"] == "wan22-ti2v-5b"
    _run([installed["bin"], "convert", "model_bf16.safetensors", "--format", "nvfp4", "-q"], **run)
    out = installed["cwd"] / "model_nvfp4mixed.safetensors"
    assert out.is_file()
    v = _run([installed["bin"], "verify", out.name, "--source", "model_bf16.safetensors", "--json"], **run)
    rep = json.loads(v.stdout)
    assert rep["passed"] and rep["mode"] == "numeric" and rep["quantized_layers"]["nvfp4"] > 0
    d = subprocess.run([str(installed["bin"]), "diff", out.name, "kj/Wan2_2-TI2V-5B_fp8_e4m3fn_scaled_KJ"],
                       capture_output=True, text=True, timeout=300, **run)
    assert d.returncode == 1 and "Traceback" not in d.stderr     # a golden manifest, found and compared
