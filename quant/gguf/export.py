"""GGUF -> dequantized safetensors (for loaders that cannot read GGUF, and the render gate's GGUF twin).

Every tensor gguf-py decodes is written, one at a time, through the atomic writer: F32/F16/BF16
tensors as stored (or cast to ``dtype``), quantized tensors as gguf-py's float32 dequantization (or
cast to ``dtype``), under the GGUF's own names and logical shapes (dims un-reversed; Wan's 5-D
``patch_embedding.weight`` as its 5-D shape). The header records where the file came from.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from quant.errors import InputError, OptionError, UsageError

DTYPES = {"keep": None, "f32": "F32", "f16": "F16", "bf16": "BF16"}


@dataclass
class ExportSummary:
    source: str
    output: str
    tensors: int
    types: dict = field(default_factory=dict)
    bytes_out: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def export_safetensors(gguf_path, output, dtype: str = "keep", *, force: bool = False, progress: bool = False,
                       sha256: str | None = None) -> ExportSummary:
    import torch

    from quant.gguf.model import sha256_file
    from quant.safetensors_io import TORCH_DTYPES, AtomicWriter
    from quant.sources import GGUFSource
    if dtype not in DTYPES:
        raise OptionError(f"{{dtype}} must be one of {', '.join(DTYPES)}, not {dtype!r}")
    g, out = Path(gguf_path), Path(output)
    if not g.is_file():
        raise InputError("no such file", g)
    if out.suffix != ".safetensors":
        raise UsageError("the output must be a .safetensors file", out)
    from quant.outputs import check_output  # never over the input, never a FIFO/device
    check_output(out, [g], overwrite=force)
    want = DTYPES[dtype]
    with GGUFSource(g) as src:
        names = src.keys()
        if not names:
            raise InputError("the GGUF holds no tensors", g)
        infos = {n: src.info(n) for n in names}
        entries = [(n, want or infos[n].dtype, tuple(infos[n].shape)) for n in names]
        types = Counter(infos[n].stored or infos[n].dtype for n in names)
        meta = {"quantgate.export_of": g.name, "quantgate.gguf_sha256": sha256 or sha256_file(g),
                "quantgate.gguf_types": json.dumps(dict(sorted(types.items())))}
        meta.update({k: v for k, v in src.metadata.items() if isinstance(v, str)})
        bar = None
        if progress:
            from tqdm import tqdm
            bar = tqdm(total=len(names), unit="tensor", desc="export-gguf", leave=False, dynamic_ncols=True)
        try:
            with AtomicWriter(out, entries, meta) as w:
                for n, (_, dt, shape) in zip(names, entries):
                    try:
                        t = src.get(n)
                    except (NotImplementedError, ValueError, TypeError) as e:
                        raise InputError(f"tensor {n!r} ({infos[n].stored}): gguf-py cannot decode it "
                                         f"({type(e).__name__}: {str(e)[:100]})", g) from None
                    w.write(n, t.to(TORCH_DTYPES[dt]).reshape(shape).contiguous())
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return ExportSummary(str(g), str(out), len(names), dict(sorted(types.items())), out.stat().st_size)
