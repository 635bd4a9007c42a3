"""Temp base directories of render servers (models/, output/, logs) that survive even SIGKILL.

A base is named ``quantgate-<kind>-<pid>-<random>`` in the system temp dir. The process that made
it removes it on every normal or signalled exit; a quantgate killed with SIGKILL cannot, so every
later start of a render session first removes the bases whose process no longer runs
(:func:`remove_stale`), and says so.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from quant.outputs import pid_alive

_RX = re.compile(r"quantgate-(comfy|gate)-(\d+)-[A-Za-z0-9_]+\Z")


def make(kind: str = "comfy") -> Path:
    """A new base directory owned by this process."""
    return Path(tempfile.mkdtemp(prefix=f"quantgate-{kind}-{os.getpid()}-"))


def remove_stale(log=None, tmpdir=None) -> list[Path]:
    """Remove base directories left by quantgate processes that are gone (killed with SIGKILL)."""
    log = log if log is not None else (lambda m: print(f"quantgate: {m}", file=sys.stderr, flush=True))
    root = Path(tmpdir or tempfile.gettempdir())
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for n in names:
        m = _RX.match(n)
        if not m:
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or pid_alive(pid):
            continue
        p = root / n
        if p.is_symlink() or not p.is_dir():
            continue
        shutil.rmtree(p, ignore_errors=True)
        if not p.exists():
            removed.append(p)
            log(f"removed the render temp directory of a quantgate process that is gone: {p}")
    return removed


class owned:
    """``with owned("gate") as d:`` a base directory removed on the way out (any exception too)."""

    def __init__(self, kind: str = "gate"):
        self.kind = kind
        self.path: Path | None = None

    def __enter__(self) -> Path:
        self.path = make(self.kind)
        return self.path

    def __exit__(self, *exc):
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        return False
