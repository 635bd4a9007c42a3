"""Child processes die with their parent (issue 20), even when the parent is killed with SIGKILL and can
run no cleanup: learned-rounding workers (``--gpus N``) and render servers call :func:`die_with_parent`
first thing (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through ctypes); where that is not available a
watchdog thread polls the parent and exits the child when it is gone. Their temp/shard directories carry
the parent's pid (:func:`quant.outputs.temp_dir`), so the next write to the same output removes those of
dead processes."""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
_libc = None


def _prctl():
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(None, use_errno=True)
                _libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
                _libc.prctl.restype = ctypes.c_int
            except (OSError, AttributeError):
                _libc = False
    return _libc or None


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> str:
    """Make this process receive ``sig`` when ``parent_pid`` (its parent) dies. Returns the mechanism used
    ("pdeathsig" or "watchdog"). Exits at once if the parent is already gone."""
    libc = _prctl()
    how = "watchdog"
    if libc is not None and libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0:
        how = "pdeathsig"
    else:
        def watch():
            while True:
                if os.getppid() != parent_pid:
                    os._exit(1)
                time.sleep(0.5)
        threading.Thread(target=watch, name="quantgate-parent-watchdog", daemon=True).start()
    if os.getppid() != parent_pid:          # the parent died before the signal was armed
        os._exit(1)
    return how
