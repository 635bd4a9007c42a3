"""pydantic v2 building blocks of the input schemas: strict types (``"2"`` is not the integer 2, ``true``
is not 1), finite floats only, bounded integers, strings and collections; :func:`validate` turns the
first schema violation into one :class:`~quant.errors.InputError` line naming the file (or URL) and the
field (``layers['blocks.0.q'].amax: must be >= 0``), never echoing the offending value's bytes."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..errors import InputError, short

I64 = 2**63 - 1
F32_MAX = 3.4028234663852886e38

# numbers: strict (no bool, no numeric strings), finite
Int = Annotated[int, Field(strict=True, ge=-I64 - 1, le=I64)]
NonNegInt = Annotated[int, Field(strict=True, ge=0, le=I64)]
PosInt = Annotated[int, Field(strict=True, ge=1, le=I64)]
Float = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-F32_MAX, le=F32_MAX)]
NonNegFloat = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=F32_MAX)]
AnyFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
# strings: bounded; names of tensors/layers/nodes
Name = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=4096)]
Text = Annotated[str, StringConstraints(strict=True, max_length=1 << 20)]
ShortText = Annotated[str, StringConstraints(strict=True, max_length=4096)]
Sha256 = Annotated[str, StringConstraints(strict=True, pattern=r"^[0-9a-f]{64}$")]


class Strict(BaseModel):
    """Unknown keys refused, every field strictly typed; finite floats."""
    model_config = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False, frozen=False,
                              hide_input_in_errors=True, validate_default=False)


class Open(Strict):
    """Like :class:`Strict`, but unknown keys are kept (forward-compatible records written by other tools)."""
    model_config = ConfigDict(extra="allow")


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part.isidentifier() and len(part) < 40):
            out += f".{part}" if out else part
        else:
            out += f"[{short(part, 40)}]"
    return out or "(top level)"


def _msg(e: dict) -> str:
    t, msg = e.get("type", ""), e.get("msg", "invalid")
    ctx = e.get("ctx") or {}
    if t == "missing":
        return "is missing"
    if t == "extra_forbidden":
        return "is not a known field"
    if t in ("int_type", "float_type", "string_type", "bool_type", "dict_type", "list_type", "model_type",
             "model_attributes_type", "tuple_type") or t.endswith("_type"):
        want = {"int_type": "an integer", "float_type": "a number", "string_type": "a string",
                "bool_type": "true or false", "dict_type": "an object/table", "list_type": "a list",
                "model_type": "an object/table", "model_attributes_type": "an object/table",
                "tuple_type": "a list"}.get(t, t.removesuffix("_type"))
        return f"must be {want}"
    if t == "finite_number":
        return "must be a finite number"
    if t == "literal_error":
        return msg.replace("Input should be", "must be")[:200]
    for k, word in (("le", "at most"), ("lt", "less than"), ("ge", "at least"), ("gt", "greater than")):
        if t in ("less_than_equal", "less_than", "greater_than_equal", "greater_than") and k in ctx:
            v = ctx[k]
            return f"must be {word} {v:g}" if isinstance(v, (int, float)) and abs(v) < 1e16 else \
                f"must be {word} {float(v):.4g}"
    if t in ("too_long", "too_short", "string_too_long", "string_too_short"):
        return msg.replace("Input should have", "must have").replace("String should have", "must have")[:200]
    msg = msg.replace("Input should be", "must be").replace("String should", "must").replace("Value error, ", "")
    return msg[:200]


def explain(err: ValidationError) -> str:
    e = err.errors(include_url=False, include_input=False)[0]
    return f"{_loc(tuple(e.get('loc', ())))}: {_msg(e)}"


def validate(model: type[BaseModel], obj: Any, where, *, what: str = "file", error=InputError):
    """``model.model_validate(obj)`` with the first violation as one ``error`` line naming ``where``."""
    try:
        return model.model_validate(obj, strict=True)
    except ValidationError as e:
        raise error(f"{what}: {explain(e)}", where) from None
    except RecursionError:
        raise error(f"{what} nests too deeply", where) from None
