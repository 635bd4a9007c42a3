"""safetensors, read and written by quantgate's own code.

* :mod:`.header` -- :func:`read_header` / :func:`parse_header_bytes` accept exactly what the safetensors
  library accepts, trusting nothing in the file (bounded header length, typed fields, offsets in range,
  no overlap, no gap, size == dtype x shape); never allocates what a header claims.
* :mod:`.json_bounded` -- the JSON grammar of serde_json (the library's parser), for the header only
  (every other JSON input goes through :mod:`quant.inputs`, whose rules are stricter: no duplicate keys).
* :mod:`.reader` -- :class:`SafetensorsFile` reads one tensor at a time (``pread``), so peak memory is
  one tensor.
* :mod:`.writer` -- :class:`AtomicWriter` streams a planned tensor list into a temp file beside the
  target, fsynced, then renamed: nothing ever appears under the final name half-written.
"""
from __future__ import annotations

from .header import MAX_HEADER_BYTES, SAFETENSORS_BITS, Header, TensorInfo, dtype_name, dtype_names, \
    parse_header_bytes, read_header, torch_dtypes
from .reader import SafetensorsFile, decode_floats
from .writer import SAFETENSORS_DTYPE_ORDER, AtomicWriter, build_header, plan_layout, safetensors_order, \
    save_file, tensor_bytes

__all__ = [
    "MAX_HEADER_BYTES", "SAFETENSORS_BITS", "SAFETENSORS_DTYPE_ORDER", "AtomicWriter", "Header", "SafetensorsFile",
    "TensorInfo", "build_header", "decode_floats", "dtype_name", "parse_header_bytes", "plan_layout",
    "read_header", "safetensors_order", "save_file", "tensor_bytes",
]


def __getattr__(name):          # TORCH_DTYPES / DTYPE_NAMES: importable names, torch imported on first use
    if name == "TORCH_DTYPES":
        return torch_dtypes()
    if name == "DTYPE_NAMES":
        return dtype_names()
    raise AttributeError(name)
