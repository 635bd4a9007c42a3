"""Golden layout manifests (``golden/**/*.json``, ``quantgate manifest show PATH``, ``diff`` against a manifest):
header-only descriptions of reference checkpoints. Everything a reader takes from one is typed here, so a
hand-edited or hostile manifest is one exit-2 line, never a KeyError or a 2**62-element shape."""
from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field, model_validator

from . import bounded
from .schema import Name, NonNegInt, Open, ShortText, Strict, Text, validate

MAX_BYTES = 64 << 20
MAX_TENSORS = 1_000_000
DType = Literal["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64",
                "I64", "U64", "F4", "F8_E8M0", "C64"]
Dim = Annotated[int, Field(strict=True, ge=0, le=2**40)]


class _Tensor(Strict):
    dtype: DType
    shape: list[Dim] = Field(max_length=8)
    data_offsets: list[NonNegInt] = Field(min_length=2, max_length=2)

    @model_validator(mode="after")
    def _sizes(self):
        if math.prod(self.shape) > 2**48:
            raise ValueError("shape has more than 2**48 elements")
        b, e = self.data_offsets
        if e < b:
            raise ValueError("data_offsets end before they begin")
        return self


class Manifest(Open):
    name: Name = "manifest"          # null is refused: readers name the source by it
    description: Text = ""
    format: ShortText | None = None
    tensor_count: NonNegInt | None = None
    file_bytes: NonNegInt | None = None
    header_bytes: NonNegInt | None = None
    metadata: dict[ShortText, Text] = Field(default_factory=dict, max_length=100_000)
    tensors: dict[Name, _Tensor] = Field(max_length=MAX_TENSORS)


def manifest_json(path) -> dict:
    """A layout manifest, validated: strict types, known dtypes, bounded shapes and sizes."""
    obj = bounded.load_json(path, what="manifest", max_bytes=MAX_BYTES, max_depth=16)
    validate(Manifest, obj, path, what="manifest")
    return obj
