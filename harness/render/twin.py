"""What a candidate file is (for thresholds), and the *dequantized twin* of a format the server cannot load.

ComfyUI < 0.8 cannot load NVFP4 (< 0.18 MXFP8, < 0.27 int8, < 0.28 W4A4, < 0.31 W4A8; the formats' loads_since). On such a server the render gate renders a twin instead: every
quantized layer dequantized by comfy-kitchen's eager reference (``ck.dequantize_nvfp4`` under
``ck.use_backend("eager")``; ``weight.float() * weight_scale`` for fp8 layers), all other tensors
copied, saved as a plain checkpoint. That is exactly the weight a GPU below SM 10 computes with
(ComfyUI dequantizes NVFP4 there); activation quantization is not emulated. Reports label it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from quant import formats
from quant.errors import InputError
from quant.comfy.versions import COMFY_VERSIONS, version_lt
from quant.safetensors_io import read_header, save_file

def structure(path):
    """What the file declares (both carriers, header wins, legacy marker), parsed by the reader
    every part uses (quant.checkpoint), so the render gate and verify never disagree about a file."""
    from quant.checkpoint import build
    from quant.sources import open_source
    src = open_source(path)
    return build(src)


def candidate_format(path) -> str:
    """'nvfp4' | 'fp8' | 'fp8-legacy' | other comfy format | 'unquantized'."""
    st = structure(path)
    try:
        if st.markers:
            return formats.marker_format().name
        known = {la.spec for la in st.declared if la.spec is not None}
        if known:         # a file's format is the last of its layers' formats in registry order (nvfp4 files
            return max(known, key=lambda f: f.order).name     # hold fp8 layers too)
        fmts = {la.comfy_format for la in st.declared if la.comfy_format}
        if fmts:
            return sorted(fmts)[0]
        if any(i.dtype in ("F8_E4M3", "F8_E5M2") for i in st.infos.values()):
            return formats.marker_format().name   # fp8 weights with no marker and no metadata (a malformed file)
        return "unquantized"
    finally:
        st.src.close()


def loads_since(fmt: str) -> str | None:
    """Oldest ComfyUI that reads format ``fmt`` at all (None: not a quantgate format)."""
    f = formats.FORMATS.get(fmt)
    return None if f is None else f.loads_since


def server_supports(fmt: str, comfy_version: str) -> bool:
    """Whether a ComfyUI of ``comfy_version`` loads files of ``fmt`` (else the gate renders the twin).
    An unknown version is taken to read comfy_quant files (>= 0.4.0)."""
    since = loads_since(fmt)
    if since is None:
        return True
    if formats.FORMATS[fmt].loader:              # a custom node's dialect: stock ComfyUI renders the twin
        return False
    lt = version_lt(comfy_version, since)
    if lt is None:
        return not version_lt(COMFY_VERSIONS["comfy_quant_tensor"], since)
    return not lt


def make_dequantized_twin(path, out, source=None) -> Path:
    """Write a plain checkpoint whose quantized layers are dequantized (comfy-kitchen eager)."""
    import comfy_kitchen as ck

    from harness.verify.kitchen import reference_for
    from quant.checkpoint import load_layer
    path, out = Path(path), Path(out)
    src_shapes = {}
    if source is not None:
        try:
            src_shapes = {n: t.shape for n, t in read_header(source).tensors.items()}
        except InputError:
            src_shapes = {}
    st = structure(path)
    tensors: dict[str, torch.Tensor] = {}
    try:
        drop = {m.key for m in st.markers}
        for la in st.declared:
            drop |= {k for suf, k in la.keys.items() if suf not in ("weight", "bias")}
        with ck.use_backend("eager"):
            for la in st.declared:
                kr = reference_for(la.spec)
                if "weight" not in la.keys or kr is None:
                    continue
                if getattr(kr, "tensors_api", False):          # multi-tensor formats (int8, mxfp8, w4a4, w4a8)
                    t = kr.load(st, la)
                    shape = src_shapes.get(la.keys["weight"])
                    n, k = tuple(shape) if shape is not None and len(shape) == 2 else \
                        la.spec.stored_nk(tuple(t["weight"].shape))
                    w = kr.decode(ck, t, n, k, la.conf if isinstance(la.conf, dict) else {})
                elif la.spec.block_scale_key is None and la.decode_scale_key not in la.keys:
                    w = st.src.get(la.keys["weight"]).to(torch.float32)   # ComfyUI: implicit scale 1
                else:
                    w, scale, bs = load_layer(st, la)
                    shape = src_shapes.get(la.keys["weight"]) if la.spec.changes_weight_shape else None
                    if shape is not None and len(shape) == 2:
                        w = kr.dequantize(ck, w, scale, bs, shape[0], shape[1])
                    else:
                        w = kr.dequantize(ck, w, scale, bs)
                    if "pre_quant_scale" in la.keys:
                        pqs = st.src.get(la.keys["pre_quant_scale"]).to(torch.float32).reshape(1, -1)
                        w = w * pqs[:, : w.shape[1]]
                tensors[la.keys["weight"]] = w.contiguous()
        for n in st.infos:
            if n in drop or n in tensors:
                continue
            t = st.src.get(n)
            if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
                t = t.to(torch.float32)              # undeclared fp8: ComfyUI casts it (scale 1)
            tensors[n] = t.contiguous()
    finally:
        st.src.close()
    save_file(tensors, out, {"quantgate_twin_of": path.name})
    return out


def is_gguf(path) -> bool:
    p = Path(path)
    if p.suffix.lower() == ".gguf":
        return True
    try:
        with open(p, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def gguf_label(path) -> str:
    """'gguf Q4_0' from the file's general.file_type (the file name's stem when absent)."""
    from quant.gguf import model as gguf_model
    m = gguf_model.read(path)
    return f"gguf {(m.file_type or Path(path).stem).replace('MOSTLY_', '')}"


def make_gguf_twin(path, out) -> Path:
    """A GGUF's dequantized twin: every tensor decoded by gguf-py (quant.gguf.export), float tensors
    as stored, so the render shows the weights ComfyUI-GGUF computes with."""
    from quant.gguf.export import export_safetensors
    export_safetensors(path, out, "keep", force=True)
    return Path(out)
