"""Hostile values and documents for the structure-aware input fuzzers (issue 20).

A fuzz case is a VALID document of its kind (built from the schema's fields) with a few fields replaced by
hostile values: the wrong JSON/TOML type ("2" for 2, true for 1, null, a list, an object), integers past
every range (2**64, a 5,000-digit integer), floats that underflow, overflow or are not numbers (1e-300,
1e300, 1e999, NaN, Infinity, -0.0), huge and deep values, strings with DEL, control characters and lone
surrogates, unknown keys, missing keys -- or the whole text truncated. Raw tokens (``Raw``) are written into
the text verbatim, so the parser sees exactly what a hostile file holds."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Hypothesis profiles of the fuzzers: "quantgate-fuzz-ci" (150 cases per input kind, what CI runs) and
# "quantgate-fuzz-10k" (10,000 per kind, run once by hand: benchmarks/fuzz_inputs.sh). QUANTGATE_FUZZ_PROFILE picks
# one; QUANTGATE_FUZZ_EXAMPLES overrides the count. Only the fuzz tests use them (FUZZ), not the global profile.
_BASE = dict(deadline=None, database=None,
             suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                    HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
settings.register_profile("quantgate-fuzz-ci", max_examples=150, **_BASE)
settings.register_profile("quantgate-fuzz-10k", max_examples=10_000, **_BASE)
PROFILE = os.environ.get("QUANTGATE_FUZZ_PROFILE", "quantgate-fuzz-ci")
N = int(os.environ.get("QUANTGATE_FUZZ_EXAMPLES", settings.get_profile(PROFILE).max_examples))
FUZZ = settings(settings.get_profile(PROFILE), max_examples=N)
PER_CASE_S = 10.0
TALLY: dict[str, dict[str, int]] = {}


class Raw(str):
    """Written into the document text verbatim (a token no serializer would produce)."""


RAW_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "9" * 5000, "0." + "1" * 400,
               "1e-400", "-0.0", "1e300", "1e-300", "5e-324", "18446744073709551616", "-9223372036854775809"]
TOML_RAW = ["inf", "-inf", "nan", "+nan", "1" + "0" * 400, "9" * 5000, "1e999", "1e-300", "1e300", "0x" + "f" * 40,
            "1979-05-27T07:32:00Z", "07:32:00", "1979-05-27", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]"
            "]]]]]]]]]]]]]]]]]]]]]]", "{a = {b = {c = {d = {e = {f = {g = {h = {i = {j = {k = {l = {m = {n = {o = {p = "
            "{q = {r = {s = {t = {u = {v = {w = {x = {y = {z = {aa = {bb = {cc = {dd = {ee = {ff = {gg = {hh = 1}}}}}}"
            "}}}}}}}}}}}}}}}}}}}}}}}}}}}}"]


def _deep(n: int):
    v = 1
    for _ in range(n):
        v = [v]
    return v


def hostile_values(toml: bool = False):
    """Hostile replacements for a field."""
    strings = st.sampled_from(["", "2", "1.5", "true", "\x7f", "a\x00b", "\ud800", "x\udfffy", "\u202e", "é" * 3,
                               "*" * 100_000, "blocks.*", "[", "../../etc/passwd", "\n\r\t"])
    if toml:
        strings = strings.filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
    ints = st.one_of(st.integers(-3, 3), st.sampled_from([2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63, 2**64, -2**63 - 1,
                                                          10**30]))
    floats = st.one_of(st.sampled_from([0.0, -0.0, 1e-300, 1e300, 5e-324, 3.5e38, -1.0, 0.5, 1e-45, 1e-39]),
                       st.floats(allow_nan=False, allow_infinity=False))
    raw = st.sampled_from(TOML_RAW if toml else RAW_NUMBERS).map(Raw)
    return st.one_of(strings, ints, floats, raw, st.booleans(), st.none() if not toml else st.just([]),
                     st.just([]), st.just({}), st.lists(ints, max_size=3), st.just({"x": 1}),
                     st.just(_deep(80)), st.sampled_from([Raw("[" * 200 + "]" * 200), Raw("{" * 3)]) if not toml
                     else st.just(Raw(TOML_RAW[-2])))


def _paths(doc, prefix=()):
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, prefix + (i,))
    return out


def _set(doc, path, value):
    if not path:
        return value
    cur = doc
    for p in path[:-1]:
        cur = cur[p]
    if value is _DELETE:
        if isinstance(cur, dict):
            cur.pop(path[-1], None)
        else:
            del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return doc


_DELETE = object()


@st.composite
def mutated(draw, valid, toml: bool = False, extra_keys=("x", "ndim", "amax", "schema")):
    """``valid``: a strategy of valid documents. Returns (document, description)."""
    doc = draw(valid)
    how = []
    for _ in range(draw(st.integers(0, 3))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace"] * 6 + ["delete", "add"]))
        if op == "replace":
            doc = _set(doc, path, draw(hostile_values(toml)))
        elif op == "delete" and path:
            doc = _set(doc, path, _DELETE)
        elif op == "add":
            tgt = doc
            for p in path:
                tgt = tgt[p]
            if isinstance(tgt, dict):
                tgt[draw(st.sampled_from(list(extra_keys)))] = draw(hostile_values(toml))
            elif isinstance(tgt, list):
                tgt.append(draw(hostile_values(toml)))
        how.append(f"{op} {'/'.join(map(str, path))[:60]}")
    return doc, how


# -- serializers that keep Raw tokens --------------------------------------------------------------------
def to_json(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{to_json(str(k))}: {to_json(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(to_json(x) for x in v) + "]"
    if isinstance(v, float) and not math.isfinite(v):
        return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(v, "NaN")
    if isinstance(v, str):
        return json.dumps(v)          # lone surrogates become \ud800 escapes, as a hostile file holds them
    return json.dumps(v)


def _toml_key(k: str) -> str:
    return json.dumps(str(k), ensure_ascii=True)


def _toml_val(v) -> str:
    if isinstance(v, Raw):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return '""'
    if isinstance(v, (int, float)):
        return repr(v) if not (isinstance(v, float) and not math.isfinite(v)) else ("nan" if v != v else
                                                                                    ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=True).replace("\\u007f", "\\u007F")
    if isinstance(v, list):
        return "[" + ", ".join(_toml_val(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_val(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def to_toml(doc: dict) -> str:
    """Top-level scalars, then [tables], then [[arrays of tables]] (lists of dicts at the top level)."""
    if not isinstance(doc, dict):
        return f"x = {_toml_val(doc)}\n"
    lines, tables, arrays = [], [], []
    for k, v in doc.items():
        if isinstance(v, dict) and not isinstance(v, Raw):
            tables.append((k, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            arrays.append((k, v))
        else:
            lines.append(f"{_toml_key(k)} = {_toml_val(v)}")
    for k, v in tables:
        lines.append(f"[{_toml_key(k)}]")
        lines += [f"{_toml_key(a)} = {_toml_val(b)}" for a, b in v.items()]
    for k, items in arrays:
        for it in items:
            lines.append(f"[[{_toml_key(k)}]]")
            lines += [f"{_toml_key(a)} = {_toml_val(b)}" for a, b in it.items()]
    return "\n".join(lines) + "\n"


def write_case(tmp: Path, name: str, text: str | bytes, truncate: int | None = None) -> Path:
    p = tmp / name
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if truncate is not None and data:
        data = data[: truncate % (len(data) + 1)]
    p.write_bytes(data)
    return p


def check(kind: str, path, fn):
    """Run ``fn()``: it returns (the promise holds), or raises a one-line exit-2 QuantgateError that names
    ``path`` (str or URL; or one of a list: a plan error names the source); anything else -- another exception, a message without the file, more than one
    line, more than PER_CASE_S seconds -- fails the case. Tallies cases per kind."""
    from quant.errors import QuantgateError
    t = TALLY.setdefault(kind, {"tried": 0, "accepted": 0, "refused": 0})
    t["tried"] += 1
    t0 = time.monotonic()
    try:
        fn()
        t["accepted"] += 1
    except QuantgateError as e:
        msg = str(e)
        assert e.exit_code == 2, msg
        assert "\n" not in msg and "\r" not in msg, msg[:300]
        names = [str(x) for x in (path if isinstance(path, (list, tuple)) else [path])]
        assert any(n in msg for n in names), (names, msg[:300])
        assert len(msg) < 2000, len(msg)
        msg.encode("utf-8")             # printable: no lone surrogate
        t["refused"] += 1
    finally:
        el = time.monotonic() - t0
        assert el < PER_CASE_S, f"{kind}: one case took {el:.1f} s"


def dump_tally():
    out = os.environ.get("QUANTGATE_FUZZ_TALLY")
    if out and TALLY:
        old = {}
        if os.path.exists(out):
            old = json.loads(Path(out).read_text())
        for k, v in TALLY.items():
            o = old.setdefault(k, {"tried": 0, "accepted": 0, "refused": 0})
            for f in v:
                o[f] += v[f]
        Path(out).write_text(json.dumps(old, indent=1) + "\n")
        TALLY.clear()
