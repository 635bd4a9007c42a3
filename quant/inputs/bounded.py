"""Bounded reading and parsing of the small text inputs (JSON and TOML) every loader of
:mod:`quant.inputs` starts from.

* :func:`read_bytes` opens without blocking (a FIFO given as an input never hangs: it is refused), reads
  only regular files, and never more than ``max_bytes``.
* :func:`parse_json` refuses NaN/Infinity, numbers longer than :data:`MAX_DIGITS` characters (a
  5,000-digit integer, a 400-digit float), non-finite floats (``1e999``), nesting deeper than
  ``max_depth``, duplicate keys (which one would count?) and lone UTF-16 surrogates.
* :func:`parse_toml` refuses ``inf``/``nan``, long numbers, deep nesting (also before tomllib's own
  recursion would hit Python's limit) and lone surrogates.

Every failure is one :class:`~quant.errors.InputError` naming the file (or URL) and the problem; the
message never echoes the input's bytes.
"""
from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import tomllib
from pathlib import Path

from ..errors import InputError

MAX_DIGITS = 40                 # characters of one number (a float64 needs at most ~25)
MAX_DEPTH = 32                  # nesting of arrays/objects/tables
MAX_BYTES = 64 << 20            # default size cap of a text input
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Reject(ValueError):
    pass


def read_bytes(path, *, max_bytes: int = MAX_BYTES, what: str = "file") -> bytes:
    """The bytes of a regular file, at most ``max_bytes``; a FIFO, device, socket or directory is refused
    without blocking on it."""
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(p, flags)
    except FileNotFoundError:
        raise InputError(f"no such {what}", p) from None
    except IsADirectoryError:
        raise InputError(f"is a directory, expected a {what}", p) from None
    except OSError as e:
        if e.errno == errno.ENXIO:      # a FIFO without a writer, opened non-blocking for reading never says this,
            raise InputError(f"is not a regular file; expected a {what}", p) from None   # a socket does
        raise InputError(f"cannot read the {what}: {e.strerror or e}", p) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(f"is a directory, expected a {what}", p)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"is not a regular file (a FIFO, device or socket); expected a {what}", p)
        if st.st_size > max_bytes:
            raise InputError(f"{what} is {st.st_size:,} bytes; at most {max_bytes:,} are read", p)
        os.set_blocking(fd, True)
        chunks, n = [], 0
        while True:
            b = os.read(fd, min(1 << 20, max_bytes + 1 - n))
            if not b:
                break
            chunks.append(b)
            n += len(b)
            if n > max_bytes:
                raise InputError(f"{what} grew past {max_bytes:,} bytes while it was read", p)
        return b"".join(chunks)
    except OSError as e:
        raise InputError(f"cannot read the {what}: {e.strerror or e}", p) from None
    finally:
        os.close(fd)


def _parse_int(s: str) -> int:
    if len(s.lstrip("-")) > MAX_DIGITS:
        raise _Reject(f"a number with {len(s):,} digits")
    return int(s)


def _parse_float(s: str) -> float:
    if len(s) > MAX_DIGITS:
        raise _Reject(f"a number of {len(s):,} characters")
    v = float(s)
    if not math.isfinite(v):
        raise _Reject(f"a number out of range ({s[:24]})")
    return v


def _no_constant(s: str):
    raise _Reject(f"{s} is not a number in JSON")


def _pairs(pairs):
    d = {}
    for k, v in pairs:
        if k in d:
            raise _Reject(f"the key {_show(k)} is given twice")
        d[k] = v
    return d


def _show(k: str, limit: int = 60) -> str:
    s = k if len(k) <= limit else k[:limit] + "..."
    return repr(s).encode("ascii", "backslashreplace").decode("ascii")


def depth(v, limit: int = 1 << 30) -> int:
    """Nesting depth of lists/dicts, iterative (no recursion on hostile input); stops early past ``limit``."""
    best, stack = 0, [(v, 1)]
    while stack:
        x, d = stack.pop()
        if isinstance(x, dict):
            best = max(best, d)
            if best > limit:
                return best
            stack.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            best = max(best, d)
            if best > limit:
                return best
            stack.extend((y, d + 1) for y in x)
    return best


def lone_surrogate(v) -> str | None:
    """Where a lone surrogate sits in ``v`` (a path such as ``layers.<key>``), or None."""
    stack = [(v, "")]
    while stack:
        x, where = stack.pop()
        if isinstance(x, str):
            if _SURROGATE.search(x):
                return where or "(top level)"
        elif isinstance(x, dict):
            for k, y in x.items():
                kk = k if isinstance(k, str) else str(k)
                if _SURROGATE.search(kk):
                    return f"{where}.{_show(kk)}" if where else _show(kk)
                stack.append((y, f"{where}.{_show(kk, 30)}" if where else _show(kk, 30)))
        elif isinstance(x, list):
            stack.extend((y, f"{where}[{i}]") for i, y in enumerate(x))
    return None


def _json_depth_prescan(text: str, max_depth: int) -> bool:
    """True when brackets (outside strings) nest deeper than ``max_depth``: refused before json's
    recursive scanner sees them."""
    d = 0
    for m in re.finditer(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\{]|[\]\}]', text):
        c = m.group(0)
        if c in "[{":
            d += 1
            if d > max_depth:
                return True
        elif c in "]}":
            d -= 1
    return False


def _text(raw: bytes | str, where, what: str, max_bytes: int, error) -> str:
    """``raw`` as text: at most ``max_bytes``, UTF-8 (JSON and TOML alike)."""
    if len(raw) > max_bytes:
        raise error(f"{what} is {len(raw):,} bytes; at most {max_bytes:,} are read", where)
    if isinstance(raw, bytes):
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what} is not UTF-8 text", where) from None
    return raw


def parse_json(raw: bytes | str, where, *, what: str = "JSON file", max_depth: int = MAX_DEPTH,
               max_bytes: int = MAX_BYTES, error=InputError):
    """Parse ``raw`` (bytes from a file or a server) with every bound of the module doc."""
    text = _text(raw, where, what, max_bytes, error)
    if text.startswith("\ufeff"):
        text = text[1:]
    if _json_depth_prescan(text, max_depth):
        raise error(f"{what} nests deeper than {max_depth} levels", where)
    try:
        obj = json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_int, parse_float=_parse_float,
                         parse_constant=_no_constant)
    except _Reject as e:
        raise error(f"{what} is not acceptable JSON ({e})", where) from None
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels", where) from None
    except ValueError as e:          # JSONDecodeError, the int-digit limit
        msg = getattr(e, "msg", None)
        pos = f" at line {e.lineno} column {e.colno}" if hasattr(e, "lineno") else ""
        raise error(f"{what} is not valid JSON ({msg or 'a number out of range'}{pos})", where) from None
    if depth(obj, max_depth) > max_depth:
        raise error(f"{what} nests deeper than {max_depth} levels", where)
    s = lone_surrogate(obj)
    if s is not None:
        raise error(f"{what} holds a lone UTF-16 surrogate (\\uD800-\\uDFFF) at {s}", where)
    return obj


def _toml_depth_prescan(text: str, max_depth: int) -> bool:
    d = 0
    for m in re.finditer(r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\{]|[\]\}]',
                         text):
        c = m.group(0)
        if c in "[{":
            d += 1
            if d > max_depth + 2:      # a [[table]] header opens two
                return True
        elif c in "]}":
            d = max(0, d - 1)
    return False


def _toml_float(s: str) -> float:
    if s.lstrip("+-") in ("inf", "nan"):
        raise _Reject(f"{s} is not a finite number")
    if len(s) > MAX_DIGITS:
        raise _Reject(f"a number of {len(s):,} characters")
    v = float(s.replace("_", ""))
    if not math.isfinite(v):
        raise _Reject(f"a number out of range ({s[:24]})")
    return v


def _toml_ints(v, where: str = ""):
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, bool):
            continue
        if isinstance(x, int) and abs(x) >= 1 << 63:
            raise _Reject("an integer outside the 64-bit range")
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)


def parse_toml(raw: bytes | str, where, *, what: str = "TOML file", max_depth: int = MAX_DEPTH,
               max_bytes: int = MAX_BYTES, error=InputError) -> dict:
    text = _text(raw, where, what, max_bytes, error)
    if _toml_depth_prescan(text, max_depth):
        raise error(f"{what} nests deeper than {max_depth} levels", where)
    try:
        obj = tomllib.loads(text, parse_float=_toml_float)
        _toml_ints(obj)
    except _Reject as e:
        raise error(f"{what} is not acceptable TOML ({e})", where) from None
    except tomllib.TOMLDecodeError as e:
        raise error(f"{what} is not valid TOML ({str(e)[:160]})", where) from None
    except RecursionError:
        raise error(f"{what} nests deeper than {max_depth} levels", where) from None
    except ValueError as e:          # an integer past Python's digit limit
        raise error(f"{what} is not acceptable TOML ({str(e)[:80]})", where) from None
    if depth(obj, max_depth) > max_depth:
        raise error(f"{what} nests deeper than {max_depth} levels", where)
    s = lone_surrogate(obj)
    if s is not None:
        raise error(f"{what} holds a lone UTF-16 surrogate at {s}", where)
    return obj


def load_json(path, *, what: str = "JSON file", max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH):
    return parse_json(read_bytes(path, max_bytes=max_bytes, what=what), Path(path), what=what,
                      max_depth=max_depth, max_bytes=max_bytes)


def load_toml(path, *, what: str = "TOML file", max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> dict:
    return parse_toml(read_bytes(path, max_bytes=max_bytes, what=what), Path(path), what=what,
                      max_depth=max_depth, max_bytes=max_bytes)
