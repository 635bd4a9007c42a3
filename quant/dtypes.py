"""safetensors dtype names and what they hold (shared by the reader, the formats and the checker)."""
from __future__ import annotations

# safetensors dtype string -> bytes per element
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8,
}
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
HIGH_PRECISION = ("F16", "BF16", "F32")
