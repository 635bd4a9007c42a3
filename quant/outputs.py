"""The one path every quantgate output takes (converted files, gate records, reports, presets).

* :func:`check_output` refuses what would destroy data: an output that is one of the inputs (same
  path, a symlink or a hard link to it), an existing output that is not a regular file (a FIFO, a
  device, a directory: even with ``--force``), and an existing file without ``overwrite``.
* :func:`atomic_file` writes a temp file beside the target, fsyncs it and renames it into place
  only on success; an error, Ctrl-C, SIGTERM or SIGHUP removes it.
* Temp files are named ``.<name>.quantgate-<pid>-<random>.partial``. A process killed with SIGKILL
  cannot remove its own; the next write to the same output removes those whose process is gone
  (:func:`remove_stale_partials`) and says so.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import sys
import tempfile
from pathlib import Path

from .errors import OptionError, QuantgateError, UsageError

_TAG = "quantgate"


def partial_prefix(path: Path) -> str:
    return f".{path.name}.{_TAG}-{os.getpid()}-"


def _partial_re(path: Path) -> re.Pattern:
    return re.compile(re.escape(f".{path.name}.{_TAG}-") + r"(\d+)-[A-Za-z0-9_]+\.partial\Z")


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:       # exists, owned by someone else
        return True
    return True


def remove_stale_partials(path, log=None) -> list[Path]:
    """Remove ``path``'s temp files left by quantgate processes that no longer run (SIGKILL, power
    loss). Only files of our own naming next to the output are touched. Returns what was removed."""
    path = Path(path)
    log = log if log is not None else (lambda m: print(f"quantgate: {m}", file=sys.stderr, flush=True))
    rx = _partial_re(path)
    removed = []
    try:
        names = os.listdir(path.parent if str(path.parent) else ".")
    except OSError:
        return removed
    for n in names:
        m = rx.match(n)
        if not m or int(m.group(1)) == os.getpid() or pid_alive(int(m.group(1))):
            continue
        p = path.parent / n
        try:
            st = os.lstat(p)
            if not stat.S_ISREG(st.st_mode):
                continue
            p.unlink()
        except OSError:
            continue
        removed.append(p)
        log(f"removed a stale partial file of an interrupted quantgate run: {p} ({st.st_size:,} bytes)")
    return removed


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path, inputs=(), *, overwrite: bool = False, what: str = "output") -> Path:
    """Raise :class:`UsageError` unless writing ``path`` is safe (see the module doc). ``inputs``:
    every file the command reads (the output must be none of them)."""
    path = Path(path)
    for i in inputs:
        if i is not None and _same_file(path, Path(i)):
            raise UsageError(f"{what} would overwrite the input {i}; choose another path", path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise UsageError(f"cannot use this {what}: {e.strerror or e}", path) from None
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} is a directory", path)
    if not stat.S_ISREG(st.st_mode):
        raise OptionError(f"{what} exists and is not a regular file (a FIFO, device or socket); "
                         "quantgate never replaces those, not even with {force}", path)
    if not overwrite:
        raise OptionError(f"{what} exists; pass {{force}} to overwrite it", path)
    return path


def fsync_dir(d: Path) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _io_error(path, e: OSError) -> QuantgateError:
    return QuantgateError(f"writing the output failed: {e.strerror or e}", path)


@contextlib.contextmanager
def atomic_file(path, *, buffering: int = 8 * 1024 * 1024):
    """Yield a binary file object; on success the data appears under ``path`` (fsync + rename),
    on any exception (KeyboardInterrupt included) the temp file is removed and nothing appears."""
    path = Path(path)
    d = path.parent
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise QuantgateError(f"cannot write the output here: {e.strerror or e}", path) from None
    remove_stale_partials(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path), suffix=".partial", dir=d)
    except OSError as e:
        raise QuantgateError(f"cannot write the output here: {e.strerror or e}", path) from None
    tmp = Path(tmp)
    f = os.fdopen(fd, "wb", buffering=buffering)
    done = False
    try:
        try:
            yield f
            f.flush()
            os.fsync(f.fileno())
            f.close()
            # the target may have become a special file since check_output: never replace one
            try:
                st = os.lstat(path)
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    raise UsageError("output exists and is not a regular file; not replaced", path)
            except FileNotFoundError:
                pass
            os.replace(tmp, path)
            done = True
        except OSError as e:          # e.g. disk full
            raise _io_error(path, e) from None
        fsync_dir(d)
    finally:
        if not done:
            try:
                f.close()
            except Exception:
                pass
            tmp.unlink(missing_ok=True)


def write_bytes(path, data: bytes, inputs=(), *, overwrite: bool = True, what: str = "output") -> Path:
    """Check ``path`` against ``inputs`` and write ``data`` atomically (records, reports, presets)."""
    check_output(path, inputs, overwrite=overwrite, what=what)
    with atomic_file(path, buffering=-1) as f:
        f.write(data)
    return Path(path)


def write_text(path, text: str, inputs=(), *, overwrite: bool = True, what: str = "output") -> Path:
    # a lone surrogate (from a hostile tensor name) must not crash the write: it is escaped
    return write_bytes(path, text.encode("utf-8", "backslashreplace"), inputs, overwrite=overwrite, what=what)
