"""The embedded-ComfyUI cache is safe for several environments and concurrent runs (issue 20). Before: the
cache was keyed by version only, so a ./qg environment and a pip-installed quantgate on one machine each
deleted and recopied the other's live copy (a render running meanwhile died: `No module named 'comfy.lora'`)."""
from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

from harness.comfy.server import prepare_copy


def _tree(d: Path, tag: str) -> Path:
    (d / "comfy").mkdir(parents=True)
    (d / "main.py").write_text(f"# {tag}\n")
    (d / "comfy" / "lora.py").write_text(f"WHO = {tag!r}\n")
    (d / "comfyui_version.py").write_text('__version__ = "0.3.75"\n')
    return d


def _prepare(args):
    src, cache = args
    os.environ["QUANTGATE_CACHE"] = cache
    return str(prepare_copy(Path(src), ""))


def test_two_sources_of_one_version_get_two_copies(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTGATE_CACHE", str(tmp_path / "cache"))
    a, b = _tree(tmp_path / "venv-a" / "comfy", "a"), _tree(tmp_path / "venv-b" / "comfy", "b")
    ca = prepare_copy(a, "")
    inode = os.stat(ca / "comfy" / "lora.py").st_ino
    cb = prepare_copy(b, "")
    assert ca != cb and (cb / "comfy" / "lora.py").read_text() == "WHO = 'b'\n"
    # the first environment's live copy was not touched by the second (same file, same content)
    assert (ca / "comfy" / "lora.py").read_text() == "WHO = 'a'\n" and os.stat(ca / "comfy" / "lora.py").st_ino == inode
    assert prepare_copy(a, "") == ca and os.stat(ca / "comfy" / "lora.py").st_ino == inode    # reused, not recopied


def test_concurrent_prepares_make_one_copy(tmp_path):
    src = _tree(tmp_path / "src", "s")
    cache = str(tmp_path / "cache")
    with mp.get_context("spawn").Pool(4) as pool:
        outs = pool.map(_prepare, [(str(src), cache)] * 8)
    assert len(set(outs)) == 1
    d = Path(outs[0])
    assert (d / "comfy" / "lora.py").read_text() == "WHO = 's'\n"
    assert [p.name for p in d.parent.iterdir() if p.name.startswith(".")] == []   # no half copies left


def test_a_killed_half_copy_is_removed_by_the_next_prepare(tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTGATE_CACHE", str(tmp_path / "cache"))
    src = _tree(tmp_path / "src", "s")
    d = prepare_copy(src, "", force=True)
    dead = d.parent / f".{d.name}.tmp-999999999"      # a pid that does not run
    dead.mkdir()
    (dead / "junk").write_text("x")
    prepare_copy(src, "", force=True)
    assert not dead.exists()
