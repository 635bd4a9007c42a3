"""JSON parsed as serde_json (the safetensors library's parser) parses it, with nothing unbounded.

:func:`loads` keeps every object as an :class:`Obj` (its list of (key, value) pairs: duplicates kept,
the caller decides), refuses NaN/Infinity and numbers out of f64 range, and turns "-0" and integers
outside i64/u64 into floats as serde_json does. :func:`depth` and :func:`has_lone_surrogate` measure
the parsed value without recursion. Used by the safetensors header parser only: the header must be
read as the library reads it (duplicates kept for the caller to judge); every other JSON input is parsed by
:mod:`quant.inputs.bounded`.
"""
from __future__ import annotations

import json
import math
import re

U64 = 2**64 - 1
MAX_DEPTH = 127                   # serde_json's recursion limit, as the whole document's nesting
SURROGATE_ESC = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Obj(list):
    """A JSON object as its list of (key, value) pairs (duplicates kept; context decides)."""


class Reject(ValueError):
    pass


def parse_int(s: str):
    v = int(s)                       # > 4300 digits: ValueError (also out of f64 range for serde)
    if s == "-0" or v > U64 or v < -2**63:
        return parse_float(s)        # serde_json: "-0" and out-of-(i64|u64) integers are f64
    return v


def parse_float(s: str):
    v = float(s)
    if math.isinf(v):
        raise Reject("number out of range")
    return v


def no_constant(name):
    raise Reject(f"{name} is not JSON")


def loads(text: str):
    """``text`` parsed; objects as :class:`Obj`. Raises :class:`Reject` (NaN, a number out of range),
    ``ValueError`` (bad JSON, the int-digit limit) or ``RecursionError``."""
    return json.loads(text, object_pairs_hook=Obj, parse_int=parse_int, parse_float=parse_float,
                      parse_constant=no_constant)


def depth(v) -> int:
    d, stack = 0, [(v, 1)]
    while stack:
        x, lvl = stack.pop()
        if isinstance(x, list):
            d = max(d, lvl)
            if lvl > MAX_DEPTH:
                break
            stack.extend((y[1] if isinstance(x, Obj) else y, lvl + 1) for y in x)
    return d


def has_lone_surrogate(v) -> bool:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if _SURROGATE.search(x):
                return True
        elif isinstance(x, Obj):
            for k, y in x:
                if _SURROGATE.search(k):
                    return True
                stack.append(y)
        elif isinstance(x, list):
            stack.extend(x)
    return False


def usize(v) -> bool:
    return type(v) is int and 0 <= v <= U64


def what(v) -> str:
    """How an error message names a parsed value's kind."""
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string", type(None): "null",
            Obj: "an object", list: "an array"}.get(type(v), "a value")


def plain(v):
    """A parsed value with every :class:`Obj` as a dict (a repeated key: the last one wins)."""
    if isinstance(v, Obj):
        return {k: plain(x) for k, x in v}
    if isinstance(v, list):
        return [plain(x) for x in v]
    return v
