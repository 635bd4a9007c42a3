"""A 28 GB-class checkpoint with the real Wan 2.2 T2V-A14B layout, written sparsely: header, scales
and comfy_quant bytes are real; the weight data are holes (cost no disk)."""
from __future__ import annotations

import math
import re
import struct

from quant import arch
from quant import formats as S
from quant.dtypes import DTYPE_BYTES
from quant.safetensors_io import build_header

BLOCK_LINEAR = re.compile(r"^blocks\.\d+\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])\.weight$")


def write_sparse_14b(path, fmt: str = "fp8", base_dtype: str = "BF16") -> int:
    spec = S.FORMATS[fmt]
    entries, small, layers = [], {}, {}
    conf = S.comfy_quant_config(spec, full_precision_mm=True) if spec.carrier == "comfy_quant" else None
    for name, shape in arch.ARCHS["wan22-t2v-a14b"].tensors():
        if BLOCK_LINEAR.match(name):
            layer = name[:-7]
            for k, dt, shp in spec.entries(layer, shape[0], shape[1]):
                entries.append((k, dt, shp))
                if dt == "F32":
                    small[k] = struct.pack("<f", 0.01) * max(1, math.prod(shp))
            if conf is not None:
                b = S.comfy_quant_bytes(conf)
                entries.append((f"{layer}.comfy_quant", "U8", (len(b),)))
                small[f"{layer}.comfy_quant"] = b
                layers[layer] = conf
        else:
            entries.append((name, base_dtype, shape))
    if spec.marker:
        entries.append((spec.marker["key"], spec.marker["dtype"], tuple(spec.marker["shape"])))
    meta = {S.QUANT_METADATA_KEY: S.quantization_metadata(layers)} if layers else None
    header = build_header(entries, meta)
    off = len(header)
    offsets = {}
    for k, dt, shp in entries:
        n = math.prod(shp) * DTYPE_BYTES[dt]
        offsets[k] = off
        off += n
    with open(path, "wb") as f:
        f.write(header)
        for k, b in small.items():
            f.seek(offsets[k])
            f.write(b)
        f.truncate(off)
    return off
