"""Real GGUF files for tests and the ladder, built from the seeded models of :mod:`harness.synth`
with the per-tensor type rules of city96's GGUF pipeline (layouts.md §4): ``tools/convert.py`` (base
F16/BF16/F32 types), the patched ``llama-quantize`` (``img_tensor_get_type``: which tensors are
quantized and to which type, the V / FFN-down / Qwen first-last overrides) and ``fix_5d_tensors.py``
(Wan's 5-D ``patch_embedding.weight`` re-inserted as F32 after ``patch_embedding.bias``).

Data: written with gguf-py's ``GGUFWriter``; Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and BF16 tensors are
quantized for real by ``gguf.quants``. gguf-py cannot *quantize* K-quants, so K-quant tensors are
either encoded by an optional real quantizer (``kquant="libgguf"``: the ``libgguf`` package's
native reference row kernels; not a dependency of quantgate) or, by default, carry all-zero block
bytes of the right size (``kquant="opaque"``) that are never meant to be decoded: such files are
used only where the type id matters (presets, plans, header counts).

:func:`header_bytes` writes only the header (gguf-py's own serializer) so the rules can be checked
against the byte sizes of the published full-size files without writing gigabytes.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

# llama ftype -> default tensor type (layouts.md §4.3)
FTYPES = {"F16": "F16", "BF16": "BF16", "Q4_0": "Q4_0", "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1",
          "Q8_0": "Q8_0", "Q2_K": "Q2_K", "Q3_K_S": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_L": "Q3_K",
          "Q4_K_S": "Q4_K", "Q4_K_M": "Q4_K", "Q5_K_S": "Q5_K", "Q5_K_M": "Q5_K", "Q6_K": "Q6_K"}
K_QUANTS = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")

_EXCLUDE = {
    "wan": ("modulation.", "patch_embedding.", "text_embedding.", "time_projection.", "time_embedding.",
            "img_emb.", "head.", "cond_encoder.", "frame_packer.", "audio_injector.", "casual_audio_encoder.",
            "trainable_cond_mask."),
    "qwen_image": ("img_in.", "txt_in.", "time_text_embed.", "proj_out.", "norm_out."),
    "flux": ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer."),
    "flux2": ("txt_in.", "img_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.",
              "single_stream_modulation.", "double_stream_modulation_"),
}
_HIPREC = {"wan": (".modulation", ".encoder.padding_tokens", "trainable_cond_mask", "casual_audio_encoder.weights",
                   "casual_audio_encoder.encoder.conv")}
_V = ("attn_v.weight", ".to_v.weight", ".v.weight", ".attn.w1v.weight", ".attn.w2v.weight", ".add_v_proj.weight",
      "_attn.v_proj.weight")
_QKV = ("attn_qkv.weight", "attn.qkv.weight", "attention.qkv.weight")
_FFN_DOWN = ("ffn_down", ".ffn.2.weight", ".ff.net.2.weight", ".mlp.layer2.weight", ".adaln_modulation_mlp.2.weight",
             ".feed_forward.w2.weight", ".img_mlp.net.2.weight", ".txt_mlp.net.2.weight")
_EXPERT_W2 = re.compile(r"experts\.\d+\.w2\.weight")
ARCH_NAME = {"wan": "wan", "qwen_image": "qwen_image", "flux": "flux", "flux2": "flux"}


def base_type(family: str, name: str, shape: tuple, src_dtype: str) -> str:
    """city96 convert.py: the type of a tensor in the F16/BF16 base GGUF (5-D: fix_5d_tensors' F32)."""
    if len(shape) > 4:
        return "F32"
    main = "BF16" if src_dtype == "BF16" else "F16"
    if src_dtype in ("F32", "BF16"):
        if len(shape) == 1 or math.prod(shape) <= 1024 or any(k in name for k in _HIPREC.get(family, ())):
            return "F32"
    return main


def quantizable(family: str, name: str, shape: tuple) -> bool:
    """Patched llama-quantize: which tensors of an image model are quantized at all."""
    return (name.endswith("weight") and len(shape) == 2 and "_norm.weight" not in name
            and not any(x in name for x in _EXCLUDE.get(family, ())))


class TypeRules:
    """``img_tensor_get_type`` of the patched llama-quantize, stateful like it (V-tensor counter)."""

    def __init__(self, family: str, ftype: str):
        if ftype not in FTYPES:
            raise ValueError(f"unknown ftype {ftype!r}; known: {', '.join(FTYPES)}")
        self.family, self.ftype, self.n_v = family, ftype, 0

    def __call__(self, name: str, shape: tuple) -> str:
        f = self.ftype
        t = FTYPES[f]
        if any(p in name for p in _V):
            t = {"Q2_K": "Q3_K", "Q3_K_L": "Q5_K", "Q4_K_M": "Q6_K", "Q5_K_M": "Q6_K"}.get(f, t)
            if f == "Q3_K_M":
                t = "Q5_K" if self.n_v < 2 else "Q4_K"
            elif f == "Q4_K_S" and self.n_v < 4:
                t = "Q5_K"
            self.n_v += 1
        elif any(p in name for p in _QKV):
            t = {"Q3_K_M": "Q4_K", "Q3_K_L": "Q4_K", "Q4_K_M": "Q5_K", "Q5_K_M": "Q6_K"}.get(f, t)
        elif any(p in name for p in _FFN_DOWN) or _EXPERT_W2.search(name):
            t = {"Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K", "Q4_K_S": "Q5_K", "Q4_K_M": "Q6_K", "Q5_K_M": "Q6_K",
                 "Q4_0": "Q4_1", "Q5_0": "Q5_1"}.get(f, t)
        if self.family == "qwen_image" and ("transformer_blocks.0." in name or "transformer_blocks.59." in name):
            t = {"Q2_K": "Q4_K", "Q3_K_S": "Q4_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q4_K", "Q4_K_M": "Q5_K",
                 "Q5_K_M": "Q6_K"}.get(f, t)
        if t in K_QUANTS and shape[-1] % 256:
            t = "F16"
        return t


def layout(arch_name: str, ftype: str, src_dtype: str = "F16") -> list[tuple[str, tuple, str]]:
    """``[(name, logical shape, ggml type)]`` in file order for a model of ``quant.arch`` converted by
    city96's tools from a ``src_dtype`` source and quantized to ``ftype``."""
    from quant import arch as _arch
    a = _arch.get(arch_name)
    items = sorted(a.tensors())               # convert.py writes safetensors' (sorted) key order
    five = [(n, s) for n, s in items if len(s) > 4]
    items = [(n, s) for n, s in items if len(s) <= 4]
    rules = TypeRules(a.family, ftype)
    out = []
    for n, s in items:
        t = base_type(a.family, n, s, src_dtype)
        if ftype not in ("F16", "BF16") and quantizable(a.family, n, s):
            t = rules(n, s)
        out.append((n, tuple(s), t))
        for n5, s5 in five:                   # fix_5d_tensors: right after the matching .bias
            if n.replace(".bias", ".weight") == n5:
                out.append((n5, tuple(s5), "F32"))
    placed = {n for n, _, _ in out}
    out += [(n5, tuple(s5), "F32") for n5, s5 in five if n5 not in placed]
    return out


def _ggml(t: str):
    from gguf import GGMLQuantizationType
    return GGMLQuantizationType[t]


def _nbytes(shape: tuple, t: str) -> int:
    from gguf import GGML_QUANT_SIZES
    block, size = GGML_QUANT_SIZES[_ggml(t)]
    n = math.prod(shape)
    if shape[-1] % block:
        raise ValueError(f"last dim {shape[-1]} is not a multiple of the {t} block size {block}")
    return n // block * size


def _new_writer(path, family: str, ftype: str):
    from gguf import GGML_QUANT_VERSION, GGUFWriter, LlamaFileType
    w = GGUFWriter(str(path) if path is not None else None, ARCH_NAME.get(family, family))
    w.add_quantization_version(GGML_QUANT_VERSION)
    w.add_file_type(int(LlamaFileType[f"MOSTLY_{ftype}"]))
    return w


def header_bytes(arch_name: str, ftype: str, src_dtype: str = "F16") -> tuple[int, list]:
    """Exact size in bytes of the GGUF city96's tools write for ``arch_name``/``ftype`` (header by
    gguf-py's serializer + each tensor's data padded to the alignment), and the layout."""
    import tempfile
    from quant import arch as _arch
    fam = _arch.get(arch_name).family
    lay = layout(arch_name, ftype, src_dtype)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "h.gguf"
        w = _new_writer(p, fam, ftype)
        for n, s, t in lay:
            nb = _nbytes(s, t)
            w.add_tensor_info(n, tuple(s), np.dtype(np.float32), nb, raw_dtype=_ggml(t))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        w.close()
        head = p.stat().st_size
    align = 32
    pad = lambda x: (x + align - 1) // align * align  # noqa: E731
    return pad(head) + sum(pad(_nbytes(s, t)) for _, s, t in lay), lay


def _encode(a: np.ndarray, t: str, kquant: str) -> np.ndarray:
    from gguf import quants
    if t in K_QUANTS:
        if kquant == "libgguf":
            import libgguf   # optional real K-quant quantizer (not a quantgate dependency)
            rows = a.reshape(-1, a.shape[-1]).astype(np.float32)
            enc = np.asarray(libgguf.quantize_rows(rows, libgguf.GGMLQuantizationType[t]), dtype=np.uint8)
            return enc.reshape(*a.shape[:-1], -1)
        if kquant != "opaque":
            raise ValueError(f"kquant must be 'opaque' or 'libgguf', not {kquant!r}")
        return np.zeros((*a.shape[:-1], _nbytes(a.shape, t) // math.prod(a.shape[:-1])), dtype=np.uint8)
    return quants.quantize(a.astype(np.float32), _ggml(t))


def make_gguf(arch_name: str, path, ftype: str = "Q4_0", *, seed: int = 0, src_dtype: str = "F16",
              kquant: str = "opaque", source_tensors: dict | None = None) -> Path:
    """Write the GGUF city96's tools make of the seeded model (or of ``source_tensors``) to ``path``.
    Returns the path. ``src_dtype``: the dtype of the safetensors the GGUF was converted from
    (QuantStack's Wan 2.2 5B files: F16; city96's Qwen-Image: BF16)."""
    import torch
    from harness.synth import tensors as synth_tensors
    from quant import arch as _arch
    path = Path(path)
    fam = _arch.get(arch_name).family
    dt = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}[src_dtype]
    src = source_tensors if source_tensors is not None else dict(synth_tensors(arch_name, seed, dt))
    w = _new_writer(path, fam, ftype)
    for n, s, t in layout(arch_name, ftype, src_dtype):
        x = src[n].float().numpy()
        if t == "F32":
            w.add_tensor(n, x.astype(np.float32))
        elif t == "F16":
            w.add_tensor(n, x.astype(np.float16))
        elif t == "BF16":
            w.add_tensor(n, _encode(x, t, kquant), raw_dtype=_ggml(t))
        else:
            w.add_tensor(n, _encode(x, t, kquant), raw_dtype=_ggml(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
