"""`pytest -m format --checkpoint CKPT` runs the gate as tests grouped by rule; failures read as a
diagnosis; unreadable files fail; no --checkpoint runs against a demo checkpoint (never vacuous)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.fixtures.planted import format_defects as P

ROOT = Path(__file__).resolve().parents[3]


def _pytest(*args):
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "format", "-q", "-p", "no:cacheprovider",
                        "harness/pytest_plugins/gate_tests/test_format_gate.py", *map(str, args)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return P.make_sources(tmp_path_factory.mktemp("plugin"))


@pytest.mark.slow
def test_good_checkpoint_passes_bad_one_fails_by_group(files, tmp_path):
    rc, out = _pytest("--checkpoint", files["nvfp4"], "--source", files["src"])
    assert rc == 0, out
    t, m = P.load(files["fp8-legacy"])
    t, m = P.drop_marker(t, m)
    bad = P.save(t, m, tmp_path / "bad.safetensors")
    rc, out = _pytest("--checkpoint", bad)
    assert rc == 1, out
    assert "test_format[carrier] - " in out or "test_format[carrier]" in out
    assert "carrier.missing" in out and "no scaled_fp8 marker" in out
    assert "test_format[numeric]" not in out.split("short test summary")[-1]


@pytest.mark.slow
def test_unreadable_checkpoint_fails(tmp_path):
    p = tmp_path / "trunc.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    rc, out = _pytest("--checkpoint", p)
    assert rc == 1 and "unreadable" in out and "Traceback" not in out


@pytest.mark.slow
def test_without_checkpoint_runs_demo():
    from harness.pytest_plugins.format import GROUPS
    rc, out = _pytest("-v", "-v")
    assert rc == 0, out
    assert "test_format[numeric] PASSED" in out and "test_format_checked_something PASSED" in out
    assert f"{len(GROUPS) + 1} passed" in out


@pytest.mark.slow
def test_relative_checkpoint_paths_resolve_against_the_callers_directory(files):
    """./qg runs pytest from the checkout; relative --checkpoint/--source are the user's, not the repo's."""
    import os
    ck, src = Path(files["nvfp4"]), Path(files["src"])
    env = dict(os.environ, QUANTGATE_CALLER_DIR=str(ck.parent))
    r = subprocess.run([sys.executable, "-m", "pytest", "-m", "format", "-p", "no:cacheprovider",
                        "harness/pytest_plugins/gate_tests/test_format_gate.py", "--checkpoint", ck.name,
                        "--source", os.path.relpath(src, ck.parent)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"checkpoint {ck}" in r.stdout + r.stderr
