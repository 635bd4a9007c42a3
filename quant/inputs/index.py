"""Sharded-checkpoint indexes (``*.safetensors.index.json``, as Hugging Face writes them): the map from
tensor name to shard file. Typed here so a hostile index is one exit-2 line: a FIFO is refused, the size is
capped, numbers and nesting are bounded, every ``weight_map`` entry names a non-empty shard file.
Where the shards may lie (inside the index's directory) is the reader's rule: :func:`quant.sources.open_source`."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from . import bounded
from .schema import Name, Open, validate

MAX_BYTES = 64 << 20              # a real 14B index is ~100 KB; 1M tensors of 60-character names fit
MAX_TENSORS = 1_000_000
Shard = Annotated[str, StringConstraints(strict=True, min_length=1, max_length=4096)]


class SafetensorsIndex(Open):
    """``weight_map`` is required; ``metadata`` and other keys (written by other tools) are kept, not read."""
    weight_map: dict[Name, Shard] = Field(max_length=MAX_TENSORS)


def safetensors_index(path) -> dict:
    """A safetensors index, validated: ``{"weight_map": {tensor: shard, ...}, ...}`` (an empty map is the
    reader's to refuse: it says 'no tensors')."""
    obj = bounded.load_json(path, what="safetensors index", max_bytes=MAX_BYTES, max_depth=8)
    validate(SafetensorsIndex, obj, path, what="safetensors index")
    return obj
