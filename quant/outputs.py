"""The one path every quantgate output takes (converted files, gate records, reports, presets).

* :func:`check_output` refuses what would destroy data: an output that is one of the inputs (same
  path, a symlink or a hard link to it), an existing output that is not a regular file (a FIFO, a
  device, a directory: even with ``--force``), and an existing file without ``overwrite``.
* :func:`atomic_file` writes a temp file beside the target, fsyncs it and renames it into place
  only on success; an error, Ctrl-C, SIGTERM or SIGHUP removes it.
* Temp files are named ``.<name>.quantgate-<pid>-<random>.partial``. A process killed with SIGKILL
  cannot remove its own; the next write to the same output removes those whose process is gone
  (:func:`remove_stale_partials`) and says so.
* The checks are made again, atomically, when the file is committed (issue 20): without
  ``overwrite`` the temp file is linked into place with renameat2(RENAME_NOREPLACE) (or link(2), which
  fails on an existing name), so of two racing writers exactly one succeeds; with ``overwrite`` the temp
  file is exchanged with the target (renameat2(RENAME_EXCHANGE)) and the old file, now under the temp
  name, is inspected: when it is an input (same device and inode) or not a regular file (a FIFO created
  meanwhile) it is exchanged back and the write is refused. What :func:`check_output` decided for a
  path (``overwrite``, the inputs) is remembered and applied at commit by :func:`atomic_file`.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
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
    return re.compile(re.escape(f".{path.name}.{_TAG}-") + r"(\d+)-[A-Za-z0-9_]+\.partial(\.d)?\Z")


def temp_dir(path) -> Path:
    """A private work directory beside the output ``path`` (a child process's shards), named like the temp
    files, ``.<name>.quantgate-<pid>-<random>.partial.d``: the next write to ``path`` removes it when this
    process is gone (SIGKILL). The caller removes it when done."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=partial_prefix(path), suffix=".partial.d", dir=path.parent))
    except OSError as e:
        raise QuantgateError(f"cannot write the output here: {e.strerror or e}", path) from None


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
            if stat.S_ISDIR(st.st_mode) and n.endswith(".partial.d"):
                import shutil
                shutil.rmtree(p)
            elif not stat.S_ISREG(st.st_mode):
                continue
            else:
                p.unlink()
        except OSError:
            continue
        removed.append(p)
        log(f"removed a stale partial {'directory' if stat.S_ISDIR(st.st_mode) else 'file'} of an interrupted "
            f"quantgate run: {p}" + ("" if stat.S_ISDIR(st.st_mode) else f" ({st.st_size:,} bytes)"))
    return removed


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.resolve() == b.resolve():
            return True
        return os.path.samefile(a, b)
    except OSError:
        return False


# what check_output decided per output path: (overwrite, {(st_dev, st_ino) of every input}, what)
_DECIDED: dict[str, tuple[bool, frozenset, str]] = {}


def _key(path: Path) -> str:
    return os.path.abspath(path)


def _ids(inputs) -> frozenset:
    out = set()
    for i in inputs:
        if i is None:
            continue
        try:
            st = os.stat(i)
        except (OSError, ValueError, TypeError):
            continue
        out.add((st.st_dev, st.st_ino))
    return frozenset(out)


def check_output(path, inputs=(), *, overwrite: bool = False, what: str = "output") -> Path:
    """Raise :class:`UsageError` unless writing ``path`` is safe (see the module doc). ``inputs``:
    every file the command reads (the output must be none of them). The decision is applied again,
    atomically, when :func:`atomic_file` commits ``path``."""
    path = Path(path)
    inputs = [i for i in inputs if i is not None]
    _DECIDED[_key(path)] = (bool(overwrite), _ids(inputs), what)
    for i in inputs:
        if _same_file(path, Path(i)):
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


# -- the commit: rename without replace / exchange-and-inspect ------------------------------------------
_RENAME_NOREPLACE, _RENAME_EXCHANGE, _AT_FDCWD = 1, 2, -100
_renameat2 = None


def _libc_renameat2():
    global _renameat2
    if _renameat2 is None:
        fn = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.renameat2
                fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):
                fn = False
        _renameat2 = fn
    return _renameat2 or None


def _rename2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(src, dst, flags); False where the system or file system cannot do it (then the caller
    falls back); OSError for a real refusal (EEXIST, ENOENT, ...)."""
    fn = _libc_renameat2()
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _exists_error(path: Path, what: str) -> UsageError:
    return UsageError(f"{what} exists (another process wrote it meanwhile?); pass --force to overwrite it", path)


def _commit(tmp: Path, path: Path, decision) -> None:
    """Move the finished temp file to ``path`` by what check_output decided (module doc)."""
    overwrite, input_ids, what = decision
    if not overwrite:
        try:
            if _rename2(tmp, path, _RENAME_NOREPLACE):
                return
        except FileExistsError:
            raise _exists_error(path, what) from None
        try:                    # link(2) never replaces an existing name
            os.link(tmp, path)
        except FileExistsError:
            raise _exists_error(path, what) from None
        tmp.unlink(missing_ok=True)
        return
    try:
        exchanged = _rename2(tmp, path, _RENAME_EXCHANGE)
    except FileNotFoundError:          # nothing under the name: place ours without replacing anything
        try:
            if _rename2(tmp, path, _RENAME_NOREPLACE):
                return
        except FileExistsError:        # appeared meanwhile: go round once more
            return _commit(tmp, path, decision)
        exchanged = False
    if exchanged:                       # the old file now sits under the temp name: inspect it
        try:
            st = os.lstat(tmp)
        except OSError:
            st = None
        bad = None
        if st is not None and not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            bad = (f"{what} exists and is not a regular file (a directory, FIFO, device or socket); quantgate "
                   "never replaces those, not even with --force")
        elif st is not None and (st.st_dev, st.st_ino) in input_ids:
            bad = f"{what} is one of the inputs; not replaced"
        if bad is not None:
            try:
                _rename2(tmp, path, _RENAME_EXCHANGE)      # put it back
            except OSError as e:
                err = UsageError(f"{bad}; putting it back failed ({e.strerror}): it is at {tmp}", path)
                err.keep_tmp = True
                raise err from None
            raise UsageError(bad, path)
        tmp.unlink(missing_ok=True)
        return
    # no renameat2: check, then replace (the old, racy path)
    try:
        st = os.lstat(path)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            raise UsageError(f"{what} exists and is not a regular file; not replaced", path)
        if (st.st_dev, st.st_ino) in input_ids:
            raise UsageError(f"{what} is one of the inputs; not replaced", path)
    except FileNotFoundError:
        pass
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path, *, buffering: int = 8 * 1024 * 1024, validate=None):
    """Yield a binary file object; on success the data appears under ``path`` (fsync + an atomic commit
    by what :func:`check_output` decided, see the module doc), on any exception (KeyboardInterrupt
    included) the temp file is removed and nothing appears. ``validate(tmp_path)``: called on the
    complete temp file before the commit; an exception from it leaves nothing behind."""
    path = Path(path)
    # the last check_output of this path decides (a path never checked: replaced, as before issue 20)
    decision = _DECIDED.get(_key(path), (True, frozenset(), "output"))
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
            if validate is not None:
                validate(tmp)
            try:
                _commit(tmp, path, decision)
            except UsageError as e:
                if getattr(e, "keep_tmp", False):
                    done = True           # the temp name holds someone's old file now: never delete it
                raise
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


def write_bytes(path, data: bytes, inputs=(), *, overwrite: bool = True, what: str = "output",
                validate=None) -> Path:
    """Check ``path`` against ``inputs`` and write ``data`` atomically (records, reports, presets).
    ``validate(data)``: raises (InputError) when ``data`` must not be written (e.g. TOML that would not
    read back); then nothing is written."""
    check_output(path, inputs, overwrite=overwrite, what=what)
    if validate is not None:
        validate(data)
    with atomic_file(path, buffering=-1) as f:
        f.write(data)
    return Path(path)


def write_text(path, text: str, inputs=(), *, overwrite: bool = True, what: str = "output",
               validate=None) -> Path:
    # a lone surrogate (from a hostile tensor name) must not crash the write: it is escaped
    return write_bytes(path, text.encode("utf-8", "backslashreplace"), inputs, overwrite=overwrite, what=what,
                       validate=validate)
