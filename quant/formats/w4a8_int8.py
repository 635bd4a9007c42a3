"""W4A8 (ComfyUI ``asym_w4a8_int8``, ``AsymW4A8Int8Layout``): 4-bit codebook weights on an int8 grid, int8
activations. The weight is ConvRot-rotated (:mod:`quant.formats.convrot`), split into groups of 16 along K and
each element is one of 16 codebook levels:

* ``weight``            I8 ``[N, K/2]``: 4-bit level indices, even column in the low nibble
* ``weight_s_rel``      F8_E4M3 ``[N, K/16]``: the group's scale relative to the row's (U8 accepted by ComfyUI)
* ``weight_s_channel``  F32 ``[N]``: the row's int8 step
* ``weight_codebook``   F32 ``[16]``: the levels (a fixed Lloyd-Max table for Gaussian-like rotated groups, else
  a per-tensor Lloyd fit)

Decode: ``int8 = clamp(round(codebook[idx] * s_rel), -127, 127)``, ``w_rot = int8 * s_channel``, then rotate back.
The kernel multiplies the int8 grid directly (int8 x int8 with dynamically int8-quantized, rotated activations).
Group scales come from two alternating-least-squares passes, then every element takes the nearest level of its
group's int8 grid. Bit-exact with comfy-kitchen 0.2.40's eager ``quantize_w4a8_int8_weight`` (defaults: 4 bits,
symmetric, codebook, e4m3 group scales, group 16).
"""
from __future__ import annotations

from . import convrot
from .base import CARRIER_COMFY_QUANT, Companion, Format, shape_rule
from quant.comfy.versions import QUANT_ALGOS_SINCE
from .int8_convrot import MIN_COMFY as INT8_CONVROT_MIN
from .int8 import DYNAMIC_INT8

GROUP = 16
LEVELS = 16
# Lloyd-Max levels of a group-normalised Gaussian: the format's fixed codebook (comfy-kitchen's built-in table)
FIXED_CODEBOOK = (
    -0.980602, -0.794529, -0.638165, -0.500986, -0.377321, -0.263187, -0.155210, -0.050720,
    0.052541, 0.156985, 0.265284, 0.379533, 0.502636, 0.638953, 0.794876, 0.980671,
)
KURTOSIS_GATE = -0.1            # excess kurtosis above this: fit a codebook instead of the fixed one
KURTOSIS_SAMPLE = 1 << 19
FIT_SAMPLE = 300000
FIT_ITERS = 25
ALS_ITERS = 2
ROW_BUDGET = 1 << 22            # elements per chunk of rows (kitchen's chunking: the same rotation calls)
CODEBOOK_SAMPLE = 1 << 22
ROTATE_INTO_ONE = True          # kernel path: each chunk's matmul writes into one buffer (False: torch.cat of chunks)
# The Triton path (quant/kernels/triton_w4a8.py via the seam's quantize_w4a8_rotated) is OPT-IN: it never ran on a GPU
# (session 4: no machine could be started). Default: the torch ops, the CUDA path tested on an H100 in session 3.
# QUANTGATE_W4A8_TRITON=1 (read at each call) or TRITON = True turns it on.
TRITON = False


def triton_opted_in() -> bool:
    import os
    return TRITON or os.environ.get("QUANTGATE_W4A8_TRITON", "0") not in ("", "0")

shape_rule("w4a8_groups", lambda n, k: (n, k // GROUP), "[N, K/16] (one per group of 16 along K)")
shape_rule("codebook", lambda n, k: (LEVELS,), "[16]")


def _nearest(values, table):
    """Index of the nearest entry of the sorted ``table`` (ties: the lower index)."""
    import torch
    last = table.numel() - 1
    pos = torch.searchsorted(table, values.contiguous())
    lo, hi = (pos - 1).clamp(0, last), pos.clamp(0, last)
    return torch.where((values - table[hi]).abs_() < (values - table[lo]).abs_(), hi, lo).to(torch.int32)


def _sample(x, size: int):
    import torch
    if x.numel() <= size:
        return x
    g = torch.Generator(device=x.device).manual_seed(0)
    return x[torch.randint(0, x.numel(), (size,), device=x.device, generator=g)]


def _fit(normalized):
    """Lloyd iterations from the quantiles of a seeded sample of the normalised groups."""
    import torch
    s = _sample(normalized.flatten(), FIT_SAMPLE).float()
    cb = torch.quantile(s, torch.linspace(0, 1, LEVELS, device=s.device))
    for _ in range(FIT_ITERS):
        a = (s.unsqueeze(-1) - cb).abs().argmin(-1)
        new = cb.clone()
        for i in range(LEVELS):
            m = a == i
            if m.any():
                new[i] = s[m].mean()
        cb = new
    return cb.contiguous()


def choose_codebook(normalized):
    """The fixed table when the normalised rotated groups are light-tailed (excess kurtosis <= -0.1), else a fit."""
    import torch
    x = _sample(normalized.detach().flatten(), KURTOSIS_SAMPLE).float()
    kurt = ((x - x.mean()) / (x.std() + 1e-9)).pow(4).mean() - 3.0
    if kurt.item() <= KURTOSIS_GATE:
        return torch.tensor(FIXED_CODEBOOK, device=normalized.device, dtype=torch.float32)
    return _fit(normalized)


def _tensor_codebook(w, g: int):
    import torch
    n, k = w.shape
    rows = max(1, CODEBOOK_SAMPLE // max(k, 1))
    sample = w.index_select(0, torch.linspace(0, n - 1, rows, device=w.device).long()) if n > rows else w
    grouped = convrot.rotate(sample.contiguous(), g).float().view(sample.shape[0], k // GROUP, GROUP)
    return choose_codebook(grouped / grouped.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8))


def grid_levels(codebook, s_rel):
    """The int8 values each level decodes to in each group: clamp(round(level * s_rel), -127, 127)."""
    return (codebook.view(1, 1, -1) * s_rel.float().unsqueeze(-1)).round_().clamp_(-127, 127)


def _quantize_rotated(r, codebook):
    import torch
    n, k = r.shape
    gw = r.float().view(n, k // GROUP, GROUP)
    gs = gw.abs().amax(dim=-1, keepdim=True).clamp(min=1e-8)
    idx = _nearest(gw / gs, codebook)
    for _ in range(ALS_ITERS):                         # least-squares group scale for the current levels
        lv = codebook[idx]
        gs = ((gw * lv).sum(-1, keepdim=True) / (lv * lv).sum(-1, keepdim=True).clamp(min=1e-8)).clamp(min=1e-8)
        idx = _nearest(gw / gs, codebook)
    s_channel = ((codebook[idx] * gs).abs().amax(dim=(1, 2)) / 127.0).clamp(min=1e-8)
    s_rel = (gs.squeeze(-1) / s_channel.unsqueeze(1)).float().contiguous().to(torch.float8_e4m3fn).contiguous()
    # final assignment: the nearest level of each group's int8 grid
    lv = grid_levels(codebook, s_rel).reshape(n * (k // GROUP), LEVELS).contiguous()
    tg = (gw / s_channel.view(-1, 1, 1)).reshape(n * (k // GROUP), GROUP).contiguous()
    last = LEVELS - 1
    pos = torch.searchsorted(lv, tg)
    lo, hi = (pos - 1).clamp(0, last), pos.clamp(0, last)
    dlo = tg.sub(torch.gather(lv, 1, lo)).abs_()
    dhi = tg.sub(torch.gather(lv, 1, hi)).abs_()
    codes = torch.where(dhi < dlo, hi, lo).to(torch.int32).view(n, k)
    return convrot.pack_int4(codes), s_rel, s_channel.float().contiguous()


def _rotated_chunks(w, g: int, block: int):
    """The rotated weight as kitchen computes it: one matmul per chunk of ``block`` rows (the same call shapes), each
    written into one [N, K] buffer (ROTATE_INTO_ONE: torch.mm of the chunk's [rows * K/g, g] view with H.T, the mm
    torch.matmul folds kitchen's call into, with ``out=``), else the chunks concatenated."""
    import torch
    n, k = w.shape
    w = w.contiguous()
    if n <= block:
        return convrot.rotate(w, g)
    if not ROTATE_INTO_ONE:
        return torch.cat([convrot.rotate(w[r0:r0 + block], g) for r0 in range(0, n, block)])
    per = k // g
    out = torch.empty((n * per, g), dtype=w.dtype, device=w.device)
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        convrot.rotate_chunk(w[r0:r1], g, out=out[r0 * per:r1 * per])
    return out.view(n, k)


def quantize_w4a8(w, g: int, *, name=None, backend=None):
    """-> (packed int8 [n, k/2], s_rel e4m3 [n, k/16], s_channel f32 [n], codebook f32 [16]).

    The codebook decision and the ConvRot rotation are torch's (kitchen's calls: the rotation in the same row
    chunks); the per-group part goes to the kernel seam's ``quantize_w4a8_rotated`` where a backend takes it and the
    Triton path is opted in (:func:`triton_opted_in`; Triton on CUDA: one launch over the whole rotated weight, the
    same bytes), else to :func:`_quantize_rotated` (the default)."""
    import torch
    from ..errors import InputError
    from ..kernels import get_backend
    from ..kernels.common import ensure_finite
    if not w.is_floating_point():
        raise InputError(f"cannot quantize a {w.dtype} tensor to w4a8", name)
    n, k = w.shape
    block = max(1, ROW_BUDGET // max(k, 1))
    be = backend or get_backend(w.device)
    op = getattr(be, "quantize_w4a8_rotated", None)
    takes = triton_opted_in() and op is not None and n and k and (
        not hasattr(be, "find") or be.find("quantize_w4a8_rotated", w) is not None)
    if takes:
        # no finiteness pass of its own: the kernel's pass finds inf/NaN in the rotated weight (non-finite wherever a
        # group of the weight is); then the weight itself is checked (a finite weight whose rotation overflowed
        # takes the torch ops, as kitchen's reference computes it). The codebook decision raises nothing on inf/NaN.
        cb = _tensor_codebook(w, g)
        r = _rotated_chunks(w, g, block)
        if callable(getattr(be, "flush", None)):
            be.flush()                  # an earlier deferred call's error is that call's, raised here as it is
        try:
            got = op(r, cb, name=name, check_finite="sync")
        except InputError:
            ensure_finite(w, name)
            got = None
        if got is not None:
            return (*got, cb)
        ensure_finite(w, name)
        rot = [r[r0:r0 + block] for r0 in range(0, n, block)]
    else:
        ensure_finite(w, name)
        cb = _tensor_codebook(w, g)
        rot = [convrot.rotate(w[r0:r0 + block].contiguous(), g) for r0 in range(0, n, block)]
    parts = [_quantize_rotated(x, cb) for x in rot]
    if len(parts) == 1:
        return (*parts[0], cb)
    return (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts]), cb)


def dequantize_w4a8(packed, s_rel, s_channel, codebook, g: int, dtype=None):
    import torch
    n = packed.shape[0]
    k = packed.shape[1] * 2
    idx = convrot.unpack_int4(packed, signed=False).long()
    if s_rel.dtype == torch.uint8:
        s_rel = s_rel.view(torch.float8_e4m3fn)
    vals = codebook.float()[idx].view(n, k // GROUP, GROUP) * s_rel.float().unsqueeze(-1)
    grid = vals.round().clamp_(-127, 127).view(n, k)
    w = grid * s_channel.float().view(n, 1)
    return convrot.rotate(w, g).to(dtype or torch.float32)


class W4a8Int8(convrot.RotatedFourBit, Format):
    name = "w4a8-int8"
    order = 7
    kernel = "w4a8"
    comfy_format = "asym_w4a8_int8"
    carrier = CARRIER_COMFY_QUANT
    file_suffix = "_w4a8_int8"
    full_scale = 127.0
    decode_scale_key = "weight_s_channel"
    block_scale_key = "weight_s_rel"
    input_scale_key = "input_scale"
    four_bit = True
    sensitive_actions = {"fp8": "int8_convrot"}
    fallback_action = "int8_convrot"
    companions = (
        Companion("weight", ("I8",), "int4_packed", True, "4-bit codebook indices of the rotated weight, two per byte",
                  missing="the layer has scales but no weight"),
        Companion("weight_s_rel", ("F8_E4M3", "U8"), "w4a8_groups", True, "per-16 group scale relative to the row's",
                  missing="ComfyUI fails with 'Missing W4A8 group scale (weight_s_rel)'"),
        Companion("weight_s_channel", ("F32",), "N", True, "per-row int8 step", positive_finite=True,
                  missing="ComfyUI decodes with no channel scale and crashes at first use"),
        Companion("weight_codebook", ("F32",), "codebook", True, "the 16 normalised levels",
                  missing="ComfyUI falls back to uniform int4 levels and the layer decodes wrong"),
    )
    per_layer_keys = ("weight", "bias", "weight_s_rel", "weight_s_channel", "weight_codebook", "weight_correction",
                      "comfy_quant")
    min_comfy = INT8_CONVROT_MIN   # its 8-bit layers are int8 ConvRot
    loads_since = QUANT_ALGOS_SINCE["asym_w4a8_int8"]
    activation = "rotated online by the layer's Hadamard group, then " + DYNAMIC_INT8
    native_sm = (7, 5)
    max_rel_error = 0.25
    min_cosine = 0.96
    doc_written = ("comfy_quant `asym_w4a8_int8`: rotated weight as 4-bit codebook indices (I8 `[N, K/2]`), "
                   "F8_E4M3 `weight_s_rel` `[N, K/16]`, F32 `weight_s_channel` `[N]`, F32 `weight_codebook` `[16]`; "
                   "`group_size` 16, `convrot_groupsize` per layer; int8 ConvRot for sensitive layers")
    doc_comfy = f"≥ {INT8_CONVROT_MIN} (asym_w4a8_int8 itself since {QUANT_ALGOS_SINCE['asym_w4a8_int8']}, the int8 ConvRot layers need the 0.33 tree); native int8 matmul on NVIDIA SM ≥ 7.5"
    description = ("ComfyUI asym_w4a8_int8: ConvRot-rotated weight as 4-bit codebook indices in groups of 16 "
                   "(e4m3 group scales, F32 per-row int8 step, F32 16-level codebook); activations rotated and "
                   "quantized to int8 per row at run time.")
    runtime_note = "w4a8 runs natively on NVIDIA SM >= 7.5 (int8 tensor cores), emulated elsewhere"

    def refuses(self, n, k):
        if k % GROUP:
            return f"K={k} is not a multiple of {GROUP}"
        return None

    def conf_problems(self, conf, n, k):
        p, out = self.rotation_problems(conf, k)
        gs = conf.get("group_size", p.get("group_size", GROUP))
        if gs != GROUP:
            out.append(f"group_size {gs!r}: the scales (weight_s_rel) are per {GROUP} elements")
        return out

    def conf_extra(self, n, k) -> dict:
        return {"group_size": GROUP, "convrot_groupsize": convrot.group_for(k)}

    def stored_nk(self, weight_shape):
        return weight_shape[0], weight_shape[1] * 2

    def block_scales_fit(self, weight_shape, scales_shape) -> bool:
        return tuple(scales_shape) == (weight_shape[0], weight_shape[1] * 2 // GROUP)

    def quantize(self, w, *, backend=None, name=None) -> dict:
        why = self.refuses(*w.shape)
        if why:
            from ..errors import ShapeError
            raise ShapeError(f"w4a8-int8: {why}", name)
        g = convrot.group_for(w.shape[1])
        q, sr, sc, cb = quantize_w4a8(w, g, name=name, backend=backend)
        return {"weight": q, "weight_s_rel": sr, "weight_s_channel": sc, "weight_codebook": cb}

    def dequantize(self, tensors, shape=None, dtype=None, *, backend=None, group: int | None = None):
        q = tensors["weight"]
        return dequantize_w4a8(q, tensors["weight_s_rel"], tensors["weight_s_channel"], tensors["weight_codebook"],
                               group or convrot.group_for(q.shape[1] * 2), dtype)

    def negated_weight(self, w):
        """Codebook indices mirrored (i -> 15 - i): the codebook is about symmetric, so rows decode about negated."""
        return convrot.pack_int4(15 - convrot.unpack_int4(w, signed=False))

    def verify_group(self, conf) -> int | None:
        from .int8 import convrot_group
        return convrot_group(conf)

    def elem_bound(self, tensors, ref, conf):
        """Each rotated element must decode to one of the two grid levels of its group that bracket it (the
        group's 16 levels on the int8 grid, times the row's step); beyond the outermost level, to that level."""
        import torch
        n, k = ref.shape
        y = convrot.rotate(ref, self.verify_group(conf))
        sc = tensors["weight_s_channel"].to(torch.float32).reshape(-1, 1, 1)
        sr = tensors["weight_s_rel"]
        sr = sr.view(torch.float8_e4m3fn) if sr.dtype == torch.uint8 else sr
        lv = torch.sort(grid_levels(tensors["weight_codebook"].to(torch.float32), sr), dim=-1).values
        g = k // GROUP
        t = (y.view(n, g, GROUP) / sc).reshape(n * g, GROUP).contiguous()
        lv = lv.reshape(n * g, LEVELS).contiguous()
        pos = torch.searchsorted(lv, t)
        lo = torch.gather(lv, 1, (pos - 1).clamp(0, LEVELS - 1))
        hi = torch.gather(lv, 1, pos.clamp(0, LEVELS - 1))
        b = torch.maximum((t - lo).abs(), (t - hi).abs()).view(n, g, GROUP) * sc
        return b.reshape(n, k)
