"""Verify rules for non-transformer checkpoints (VAEs, text encoders), from :mod:`quant.model_kind`.

* ``model.kind`` (info): what the file is and which modules ComfyUI's quantized ops can consume.
* ``model.vae-fp8`` (error): a VAE weight stored as fp8 (or int8/packed): ComfyUI's WAN VAE has no
  quantized ops; the weight is value-cast on load (any scale ignored): precision lost, nothing gained.
* ``model.quantized-norm`` (error): a text-encoder norm stored quantized (T5LayerNorm is never a quantized op).
* ``model.quantized-embedding`` (warning): a quantized Embedding needs a ComfyUI whose mixed-precision ops
  have an Embedding (the 0.33 tree: fp8 / int8_tensorwise; 0.3.75 has none).
"""
from __future__ import annotations

from quant import model_kind

from .findings import Findings


def run(st, f: Findings):
    mk = model_kind.detect(st.infos)
    if mk is None:
        return None
    f.info("model.kind", mk.summary() + f"; built with {mk.ops}")
    q = mk.quantized()
    if mk.role == "vae":
        bad = sorted(m.name for m in q)
        if bad:
            f.error("model.vae-fp8", "VAE weight stored as fp8/8-bit: ComfyUI builds the WAN VAE without quantized ops "
                    "(comfy.ops.disable_weight_init), so the weight is value-cast to the VAE dtype on load (any "
                    "scale ignored): precision lost, no memory or speed gained; keep VAE convs in bf16/fp32", bad)
    else:
        norms = sorted(m.name for m in q if m.kind == "norm")
        if norms:
            f.error("model.quantized-norm", "text-encoder norm stored quantized: T5LayerNorm is never a quantized op in "
                                            "ComfyUI (the value is cast, not scaled)", norms)
        emb = sorted(m.name for m in q if m.kind == "embedding")
        if emb:
            f.warning("model.quantized-embedding", "quantized Embedding: only a ComfyUI whose mixed-precision ops have an "
                                                   "Embedding loads it (0.33 tree: fp8 / int8_tensorwise; 0.3.75: none)", emb)
    return mk
