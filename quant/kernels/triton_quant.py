"""Triton kernels for FP8 per-tensor and NVFP4 quantize/dequantize on CUDA (Hopper sm_90 and up).

Why Triton: it is installed wherever PyTorch's CUDA build is (the GPU box and the project venv),
kernels compile at first call with no build step or toolchain, and ``TRITON_INTERPRET=1`` runs the
very same kernels on the CPU, so CI checks them against the eager reference without a GPU.

Round-to-nearest is bit-exact with the eager reference (quant/fp8.py, quant/nvfp4.py): every
operation is the same IEEE float32 operation in the same order (true division via ``div_rn``: fp8
divides the float32 weight by its scale, as comfy-kitchen's GPU kernels and comfy-quants do).

Two passes over the weight: an amax pass (grid-stride, one atomic max of the |x| bit patterns, so
NaN/inf propagate and are reported by the caller) and the quantize pass, whose programs walk the
tiles in reverse order so the first ones hit what the amax pass left in L2.

No sm_100 instructions (no ``cvt .e2m1x2``): E2M1 codes come from seven comparisons. The fp32 ->
e4m3 cast uses the hardware ``cvt.rn.satfinite`` on the GPU (``HW=True``) and an integer
round-to-nearest-even in the interpreter (``HW=False``; Triton's interpreter casts fp8 wrongly);
the GPU test checks both paths.
"""
from __future__ import annotations

import os

import torch

try:  # triton is optional: without it (or without CUDA and the interpreter) the backend is unavailable
    import triton
    import triton.language as tl
    from triton.language.extra import libdevice
except Exception:  # pragma: no cover - exercised only where triton is missing
    triton = None
    tl = None
    libdevice = None

FP8_MAX = 448.0
FP4_MAX = 6.0
_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
AMAX_BLOCK = 4096
FP8_BLOCK = 4096                 # dequantize
NV_BM, NV_BK = 32, 256           # dequantize tile
# Launch configuration of the quantize kernels (H200-tuned defaults; results are the same bits for any
# of them). QUANTGATE_TRITON_CFG="key=value,..." overrides, for the tuning sweep (benchmarks/gpu_sweep.py).
CFG = {"amax_programs": 1024, "fp8_block": 4096, "fp8_warps": 8, "fp8_per_sm": 4, "fp8_l2": 0,
       "nv_bm": 16, "nv_bk": 256, "nv_warps": 4, "nv_per_sm": 16, "nv_enc": 1, "nv_l2": 1,
       "nv_fastdiv": 1, "mx_bm": 32, "mx_bk": 128, "mx_warps": 4,
       "rot_fused": 0, "rot_chunk_kb": 0, "rot_chunk_l2_div": 4, "rot_bm": 64, "rot_warps": 8, "rot_stages": 2, "i8_bm": 4, "i8_bk": 1024, "i8_warps": 4, "w4_bm": 4, "w4_bk": 1024, "w4_warps": 4,
       "i8_onepass": 0, "i8_onepass_bm": 1, "w4_onepass": 0, "w4_onepass_bm": 1}     # the H200 sweep's winners (benchmarks/results/h200-fastgpu-2026-11-30.json)
for _kv in filter(None, os.environ.get("QUANTGATE_TRITON_CFG", "").split(",")):
    _k, _v = _kv.split("=")
    if _k.strip() not in CFG:
        raise ValueError(f"QUANTGATE_TRITON_CFG: unknown key {_k!r}")
    CFG[_k.strip()] = int(_v)


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device=None) -> bool:
    """Usable for tensors on ``device``: CUDA with triton, or any device under TRITON_INTERPRET=1."""
    if triton is None:
        return False
    dev = torch.device(device) if device is not None else None
    if interpreted():
        return dev is None or dev.type == "cpu"
    if dev is not None and dev.type != "cuda":
        return False
    if not torch.cuda.is_available():
        return False
    return torch.cuda.get_device_capability(dev)[0] >= 9     # e4m3 hardware casts (sm_89+); Hopper target


if triton is not None:
    @triton.jit
    def _e4m3_rne(a):
        """|a| <= 448 (fp32, non-negative) -> (code int32 0..126, its value as fp32), RNE."""
        bits = a.to(tl.int32, bitcast=True)
        r = bits + 0x7FFFF + ((bits >> 20) & 1)
        r = r & -1048576                                     # ~0xFFFFF: keep 3 mantissa bits
        code_n = (r >> 20) - 960                             # (exp - 120) << 3 | mant
        val_n = r.to(tl.float32, bitcast=True)
        y = a * 512.0                                        # subnormal step 2^-9, exact
        q = (y + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000     # RNE to an integer
        sub = a < 0.015625                                   # below 2^-6
        code = tl.where(sub, q, code_n)
        val = tl.where(sub, q.to(tl.float32) * 0.001953125, val_n)
        return code, val

    @triton.jit
    def _to_e4m3(t, HW: tl.constexpr):
        """fp32 t with |t| <= 448 -> (uint8 e4m3fn bits, fp32 value of the rounded code)."""
        if HW:
            f8 = t.to(tl.float8e4nv)
            return f8.to(tl.uint8, bitcast=True), f8.to(tl.float32)
        else:
            neg = t.to(tl.int32, bitcast=True) < 0
            code, val = _e4m3_rne(tl.abs(t))
            code = tl.where(neg, code | 128, code)
            val = tl.where(neg, -val, val)
            return code.to(tl.uint8), val

    @triton.jit
    def _from_e4m3(b, HW: tl.constexpr):
        """uint8 e4m3fn bits -> fp32."""
        if HW:
            return b.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        else:
            c = b.to(tl.int32)
            e = (c >> 3) & 15
            m = c & 7
            mag = tl.where(e == 0, m.to(tl.float32) * 0.001953125,
                           (((e + 120) << 23) | (m << 20)).to(tl.float32, bitcast=True))
            return tl.where((c & 128) != 0, -mag, mag)

    @triton.jit
    def _amax_kernel(x_ptr, part_ptr, numel, BLOCK: tl.constexpr, L2H: tl.constexpr):
        """part[pid] = max of the |x| float32 bit patterns of this program's tiles (grid-stride, so
        the grid sweeps the tensor front to back). As integers NaN > inf > every finite value."""
        pid = tl.program_id(0)
        nprog = tl.num_programs(0)
        acc = tl.zeros([BLOCK], dtype=tl.int32)
        for start in range(pid * BLOCK, numel, nprog * BLOCK):
            offs = start + tl.arange(0, BLOCK)
            if L2H:     # keep what this pass reads in L2 for the quantize pass (which reads in reverse)
                x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0, eviction_policy="evict_last")
            else:
                x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0)
            x = x.to(tl.float32)
            acc = tl.maximum(acc, x.to(tl.int32, bitcast=True) & 0x7FFFFFFF)
        tl.store(part_ptr + pid, tl.max(acc, axis=0))

    @triton.jit
    def _amax_of(part_ptr, nparts, amax_ptr, PBLOCK: tl.constexpr):
        """Reduce the amax partials (a few KB, from L2); program 0 records the amax."""
        o = tl.arange(0, PBLOCK)
        bits = tl.max(tl.load(part_ptr + o, mask=o < nparts, other=0), axis=0)
        if tl.program_id(0) == 0:
            tl.store(amax_ptr, bits)
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _round_to(t, KIND: tl.constexpr, HW: tl.constexpr):
        """Round fp32 t to the input dtype (KIND 1 bf16, 2 fp16) and back, RNE; fp32 unchanged.
        (The interpreter truncates fp32 -> bf16, so HW=False rounds the bits itself.)"""
        if KIND == 1:
            if HW:
                return t.to(tl.bfloat16).to(tl.float32)
            else:
                b = t.to(tl.int32, bitcast=True)
                b = (b + 0x7FFF + ((b >> 16) & 1)) & -65536
                return b.to(tl.float32, bitcast=True)
        elif KIND == 2:
            return t.to(tl.float16).to(tl.float32)
        else:
            return t

    @triton.jit
    def _fp8_kernel(x_ptr, q_ptr, part_ptr, nparts, amax_ptr, scale_ptr, numel, ntiles,
                    KIND: tl.constexpr, BLOCK: tl.constexpr, HW: tl.constexpr, PBLOCK: tl.constexpr,
                    L2H: tl.constexpr, GIVEN: tl.constexpr):
        amax = _amax_of(part_ptr, nparts, amax_ptr, PBLOCK)
        pid = tl.program_id(0)
        if GIVEN:                                    # the caller's scale
            s = tl.load(scale_ptr)
        else:
            s = tl.math.div_rn(amax, 448.0)
            s = tl.where(s > 0, s, 1.0)
            if pid == 0:
                tl.store(scale_ptr, s)
        # persistent, tiles in reverse order: the amax pass's tail is still in L2
        for i in range(pid, ntiles, tl.num_programs(0)):
            offs = (ntiles - 1 - i) * BLOCK + tl.arange(0, BLOCK)
            m = offs < numel
            if L2H:
                x = tl.load(x_ptr + offs, mask=m, other=0.0, eviction_policy="evict_first").to(tl.float32)
            else:
                x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
            t = tl.math.div_rn(x, s)                 # IEEE fp32 division, as the eager reference
            t = tl.minimum(tl.maximum(t, -448.0), 448.0)
            code, _ = _to_e4m3(t, HW)
            tl.store(q_ptr + offs, code, mask=m)

    @triton.jit
    def _nvfp4_kernel(x_ptr, p_ptr, s_ptr, part_ptr, nparts, amax_ptr, s2_ptr, N, K, NP, KP, C4, ROWS_SW, ntm, ntk,
                      BM: tl.constexpr, BK: tl.constexpr, HW: tl.constexpr, GIVEN: tl.constexpr,
                      PBLOCK: tl.constexpr, ENC: tl.constexpr, L2H: tl.constexpr, FASTDIV: tl.constexpr):
        """One [BM, BK] tile: block amax, e4m3 block scales (written swizzled), E2M1 codes packed
        even-element-high. Tiles cover rup(N,128) rows x rup(C,4) blocks so the swizzle padding is
        written as zeros too."""
        pid = tl.program_id(0)
        amax = _amax_of(part_ptr, nparts, amax_ptr, PBLOCK)
        if GIVEN:                                    # caller's weight_scale_2
            s2 = tl.load(s2_ptr)
        else:
            s2 = tl.math.div_rn(amax, 2688.0)
            s2 = tl.where(s2 > 0, s2, 1.0)
            if pid == 0:
                tl.store(s2_ptr, s2)
        for i in range(pid, ntm * ntk, tl.num_programs(0)):
            _nvfp4_tile(x_ptr, p_ptr, s_ptr, s2, ntm * ntk - 1 - i, N, K, NP, KP, C4, ROWS_SW, ntk, BM, BK, HW, ENC, L2H, FASTDIV)

    @triton.jit
    def _nvfp4_tile(x_ptr, p_ptr, s_ptr, s2, t, N, K, NP, KP, C4, ROWS_SW, ntk,
                    BM: tl.constexpr, BK: tl.constexpr, HW: tl.constexpr, ENC: tl.constexpr, L2H: tl.constexpr,
                    FASTDIV: tl.constexpr):
        tm = t // ntk
        tk = t % ntk
        rows = tm * BM + tl.arange(0, BM)
        cols = tk * BK + tl.arange(0, BK)
        xm = (rows[:, None] < N) & (cols[None, :] < K)
        if L2H:
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], mask=xm, other=0.0,
                        eviction_policy="evict_first")
        else:
            x = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], mask=xm, other=0.0)
        xb = tl.reshape(x.to(tl.float32), (BM, BK // 16, 16))
        amax_b = tl.max(tl.abs(xb), axis=2)                                  # [BM, BK/16]
        bsv = tl.math.div_rn(tl.math.div_rn(amax_b, 6.0), s2)
        bsv = tl.minimum(bsv, 448.0)
        bcode, bval = _to_e4m3(bsv, HW)
        total = s2 * bval
        zero = total == 0
        total = tl.where(zero, 1.0, total)
        if HW and FASTDIV:
            # x / total, correctly rounded, from the block's correctly rounded reciprocal and one FMA
            # correction (Markstein: exact when nothing under/overflows, guaranteed for 2^-90 <= total
            # <= 2^90; other tiles take the IEEE division). 3 ops a value instead of a div.rn.f32.
            rt = tl.math.div_rn(1.0, total)
            ok = (total >= 8.077935669463161e-28) & (total <= 1.2379400392853803e+27)
            if tl.min(tl.min(ok.to(tl.int32), axis=1), axis=0) == 1:
                q = xb * rt[:, :, None]
                e = tl.fma(-total[:, :, None], q, xb)
                v = tl.fma(e, rt[:, :, None], q)
            else:
                v = tl.math.div_rn(xb, total[:, :, None])
        else:
            v = tl.math.div_rn(xb, total[:, :, None])
        a = tl.minimum(tl.abs(v), 6.0)
        if ENC == 0:     # count the decision boundaries below |v| (ties: 0.25/1.25/2.5/5 down, 0.75/1.75/3.5 up)
            mag = ((a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
                   + (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
                   + (a > 5.0).to(tl.int32))
        else:            # round the float to 1 mantissa bit, ties to even (the same codes, fewer ops)
            bits = a.to(tl.int32, bitcast=True)
            rb = (bits + 0x1FFFFF + ((bits >> 22) & 1)) >> 22
            qs = (a * 2.0 + 8388608.0).to(tl.int32, bitcast=True) - 0x4B000000
            mag = tl.where(a < 1.0, qs, rb - 252)
        # the sign of x / total is the sign of x (total > 0); zero-scale blocks are all +0 (code 0)
        code = tl.where(zero[:, :, None], 0, mag | ((xb.to(tl.int32, bitcast=True) >> 28) & 8))
        pairs = tl.reshape(code, (BM, BK // 2, 2))
        hi, lo = tl.split(pairs)
        byte = ((hi << 4) | lo).to(tl.uint8)
        pc = tk * (BK // 2) + tl.arange(0, BK // 2)
        pm = (rows[:, None] < NP) & (pc[None, :] < KP // 2)
        tl.store(p_ptr + rows[:, None].to(tl.int64) * (KP // 2) + pc[None, :], byte, mask=pm)
        # swizzled scale offsets of logical (r, c)
        r = rows[:, None]
        c = tk * (BK // 16) + tl.arange(0, BK // 16)[None, :]
        off = (((r // 128) * (C4 // 4) + c // 4) * 32 + r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
        sm = (r < ROWS_SW) & (c < C4)
        tl.store(s_ptr + off.to(tl.int64), bcode, mask=sm)

    @triton.jit
    def _load_h(h_ptr, ROT: tl.constexpr, HW: tl.constexpr):
        """The [ROT, ROT] ConvRot Hadamard (in x's dtype; fp32 under the interpreter), loaded ONCE per program and
        kept as the dot's shared-memory operand for every tile; ROT == 0: nothing to load."""
        if ROT > 0:
            hr = tl.arange(0, ROT)
            h = tl.load(h_ptr + hr[:, None] * ROT + hr[None, :])
            if not HW:          # the interpreter's dot mishandles bf16 (exact products in fp32 instead)
                h = h.to(tl.float32)
            return h
        else:
            return 0.0

    @triton.jit
    def _rows_tile(x_ptr, h, base, cols, m, KIND: tl.constexpr, HW: tl.constexpr, ROT: tl.constexpr):
        """The [BM, BK] tile of x as fp32; ROT > 0 (BK == ROT): rotated by the ConvRot Hadamard ``h`` (_load_h;
        fp32 accumulation) and rounded to x's dtype, as torch.matmul(x.view(.., ROT), H) writes it."""
        x = tl.load(x_ptr + base + cols[None, :], mask=m, other=0.0)
        if ROT > 0:
            if not HW:
                x = x.to(tl.float32)
            if KIND == 0 or not HW:
                r = tl.dot(x, h, input_precision="ieee", out_dtype=tl.float32)
            else:
                r = tl.dot(x, h, out_dtype=tl.float32)
            return _round_to(r, KIND, HW)
        else:
            return x.to(tl.float32)

    @triton.jit
    def _row_amax(a, acc, bad):
        """Running row max of |x| (a >= 0) and count of non-finite values (NaN and inf both count)."""
        return tl.maximum(acc, tl.max(a, axis=1)), bad + tl.sum(tl.where(a < float("inf"), 0.0, 1.0), axis=1)

    @triton.jit
    def _int8_codes(x, sx, KIND: tl.constexpr, HW: tl.constexpr):
        t = _round_to(tl.math.div_rn(x, sx[:, None]), KIND, HW)
        t = tl.minimum(tl.maximum(t, -128.0), 127.0)
        t = (t + 12582912.0) - 12582912.0              # round half to even (|t| <= 128 < 2**22)
        return t.to(tl.int8)

    @triton.jit
    def _int8_scale(acc, KIND: tl.constexpr, HW: tl.constexpr, INV127: tl.constexpr, TINY: tl.constexpr):
        """-> (s stored in fp32, the divisor in the weight's dtype)."""
        if HW:      # torch on CUDA divides by a Python scalar as a multiply by its fp32 reciprocal (kitchen's
            s = tl.maximum(acc * INV127, 1e-30)      # eager reference on the GPU); on the CPU it divides
        else:
            s = tl.maximum(tl.math.div_rn(acc, 127.0), 1e-30)
        sx = _round_to(s, KIND, HW)
        return s, tl.where(sx == 0.0, TINY, sx)

    @triton.jit
    def _int8_rows_kernel(x_ptr, q_ptr, s_ptr, amax_ptr, h_ptr, N, K, KIND: tl.constexpr, BM: tl.constexpr,
                          BK: tl.constexpr, TINY: tl.constexpr, HW: tl.constexpr, INV127: tl.constexpr,
                          ROT: tl.constexpr, ONEPASS: tl.constexpr):
        """int8 per row (comfy-kitchen's eager quantize_int8_rowwise on the same device, bit for bit):
        s = max(amax/127, 1e-30) in fp32 (stored; on CUDA amax x fp32(1/127), as torch computes it there), the
        division by s rounded to the input dtype (torch divides bf16/fp16 in fp32 and rounds), then round-half-even
        and clamp [-128, 127]. ONEPASS (BK >= K): each row strip is loaded once; else two passes over it (the second
        from L2). ROT > 0: the ConvRot rotation is done here, per group of ROT columns (int8-convrot fused)."""
        h = _load_h(h_ptr, ROT, HW)
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        rm = rows < N
        base = rows.to(tl.int64)[:, None] * K
        acc = tl.zeros((BM,), dtype=tl.float32)
        bad = tl.zeros((BM,), dtype=tl.float32)
        if ONEPASS:
            cols = tl.arange(0, BK)
            m = rm[:, None] & (cols < K)[None, :]
            x = _rows_tile(x_ptr, h, base, cols, m, KIND, HW, ROT)
            acc, bad = _row_amax(tl.abs(x), acc, bad)
            s, sx = _int8_scale(acc, KIND, HW, INV127, TINY)
            tl.store(q_ptr + base + cols[None, :], _int8_codes(x, sx, KIND, HW), mask=m)
        else:
            for k0 in range(0, K, BK):
                cols = k0 + tl.arange(0, BK)
                m = rm[:, None] & (cols < K)[None, :]
                acc, bad = _row_amax(tl.abs(_rows_tile(x_ptr, h, base, cols, m, KIND, HW, ROT)), acc, bad)
            s, sx = _int8_scale(acc, KIND, HW, INV127, TINY)
            for k0 in range(0, K, BK):
                cols = k0 + tl.arange(0, BK)
                m = rm[:, None] & (cols < K)[None, :]
                x = _rows_tile(x_ptr, h, base, cols, m, KIND, HW, ROT)
                tl.store(q_ptr + base + cols[None, :], _int8_codes(x, sx, KIND, HW), mask=m)
        tl.store(s_ptr + rows, s, mask=rm)
        tl.store(amax_ptr + rows, tl.where(bad > 0, float("nan"), acc), mask=rm)

    @triton.jit
    def _w4a4_store(p_ptr, pbase, rm, x, s, k0, K, BM: tl.constexpr, BK: tl.constexpr, KIND: tl.constexpr,
                    HW: tl.constexpr):
        t = _round_to(tl.math.div_rn(x, s[:, None]), KIND, HW)
        t = (t + 12582912.0) - 12582912.0              # round half to even (|t| small: s ~ amax / 7)
        t = tl.where(t == t, tl.minimum(tl.maximum(t, -7.0), 7.0), 0.0)    # NaN (0/0 in fp16) -> 0, as torch
        c = tl.reshape(t.to(tl.int32), (BM, BK // 2, 2))
        even, odd = tl.split(c)
        byte = ((even & 15) | ((odd & 15) << 4)).to(tl.int8)
        pc = k0 // 2 + tl.arange(0, BK // 2)
        tl.store(p_ptr + pbase + pc[None, :], byte, mask=rm[:, None] & (pc < K // 2)[None, :])

    @triton.jit
    def _w4a4_rows_kernel(x_ptr, p_ptr, s_ptr, amax_ptr, h_ptr, N, K, KIND: tl.constexpr, BM: tl.constexpr,
                          BK: tl.constexpr, HW: tl.constexpr, INV7: tl.constexpr, CMIN: tl.constexpr,
                          ROT: tl.constexpr, ONEPASS: tl.constexpr):
        """W4A4 ConvRot per row, on the rotated weight (ROT = 0: x is rotated already; ROT > 0: rotated here), as
        comfy-kitchen's eager quantize_convrot_w4a4_weight computes it on the same device: in the weight's dtype
        amax = max(|row|, dtype(1e-10)), s = amax / 7 (on CUDA amax x fp32(1/7)), codes = round-half-even(r / s)
        clamped to [-7, 7], packed two per byte with the EVEN column in the low nibble; s stored as fp32."""
        h = _load_h(h_ptr, ROT, HW)
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        rm = rows < N
        base = rows.to(tl.int64)[:, None] * K
        pbase = rows.to(tl.int64)[:, None] * (K // 2)
        acc = tl.zeros((BM,), dtype=tl.float32)
        bad = tl.zeros((BM,), dtype=tl.float32)
        if ONEPASS:
            cols = tl.arange(0, BK)
            m = rm[:, None] & (cols < K)[None, :]
            x = _rows_tile(x_ptr, h, base, cols, m, KIND, HW, ROT)
            acc, bad = _row_amax(tl.abs(x), acc, bad)
        else:
            for k0 in range(0, K, BK):
                cols = k0 + tl.arange(0, BK)
                m = rm[:, None] & (cols < K)[None, :]
                acc, bad = _row_amax(tl.abs(_rows_tile(x_ptr, h, base, cols, m, KIND, HW, ROT)), acc, bad)
        tl.store(amax_ptr + rows, tl.where(bad > 0, float("nan"), acc), mask=rm)
        if HW:
            s = _round_to(tl.maximum(acc, CMIN) * INV7, KIND, HW)
        else:
            s = _round_to(tl.math.div_rn(tl.maximum(acc, CMIN), 7.0), KIND, HW)
        tl.store(s_ptr + rows, s, mask=rm)
        if ONEPASS:
            _w4a4_store(p_ptr, pbase, rm, x, s, 0, K, BM, BK, KIND, HW)
        else:
            for k0 in range(0, K, BK):
                cols = k0 + tl.arange(0, BK)
                m = rm[:, None] & (cols < K)[None, :]
                x = _rows_tile(x_ptr, h, base, cols, m, KIND, HW, ROT)
                _w4a4_store(p_ptr, pbase, rm, x, s, k0, K, BM, BK, KIND, HW)

    @triton.jit
    def _mxfp8_kernel(x_ptr, q_ptr, s_ptr, amax_ptr, N, K, NP, KP, C4, ntk,
                      BM: tl.constexpr, BK: tl.constexpr, HW: tl.constexpr, INV448: tl.constexpr):
        """One [BM, BK] tile of the [rup(NP,128), 32 * C4] grid that covers the swizzled scales: per 32-element
        block amax, E8M0 exponent ceil(log2(amax/448)) + 127 (clamped to [0, 254], 0 for an all-zero block),
        codes = x / 2**(e-127) clamped to +-448 and cast to e4m3 (comfy-kitchen's eager quantize_mxfp8 on the
        same device, bit for bit: on CUDA torch divides by the Python scalar 448 as a multiply by fp32(1/448),
        and its log2 is libdevice's). Padding rows / columns are written as zeros (codes and exponents)."""
        pid = tl.program_id(0)
        tm = pid // ntk
        tk = pid % ntk
        rows = tm * BM + tl.arange(0, BM)
        cols = tk * BK + tl.arange(0, BK)
        xm = (rows[:, None] < N) & (cols[None, :] < K)
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], mask=xm, other=0.0).to(tl.float32)
        bits = x.to(tl.int32, bitcast=True) & 0x7FFFFFFF            # |x| as ordered integers: NaN > inf > finite
        tl.atomic_max(amax_ptr, tl.max(tl.max(bits, axis=1), axis=0))
        xb = tl.reshape(x, (BM, BK // 32, 32))
        amax_b = tl.max(tl.reshape(bits, (BM, BK // 32, 32)), axis=2).to(tl.float32, bitcast=True)
        if HW:
            need = amax_b * INV448
        else:
            need = tl.math.div_rn(amax_b, 448.0)
        nb = need.to(tl.int32, bitcast=True)
        nb = tl.where(nb < 0x00400000, 0x00400000, nb)                  # clamp(min=2**-127), on the bits
        if HW:      # libdevice's log2f (torch's on CUDA); Triton links libdevice flush-to-zero, so a subnormal
            sub = nb < 0x00800000       # need (bits m: m * 2**-149) goes in as m * 2**-125 (exact) and 24 comes off
            lg = libdevice.log2(tl.where(sub, nb.to(tl.float32) * 2.350988701644575e-38, nb.to(tl.float32, bitcast=True)))
            lg = tl.where(sub, lg - 24.0, lg)
        else:
            lg = tl.log2(nb.to(tl.float32, bitcast=True))
        if HW:
            e = libdevice.ceil(lg).to(tl.int32) + 127
        else:
            e = tl.ceil(lg).to(tl.int32) + 127
        e = tl.minimum(tl.maximum(e, 0), 254)
        zero = amax_b == 0.0
        e = tl.where(zero, 0, e)
        s = tl.where(zero, 1.0, tl.where(e == 0, 0.0, (e << 23).to(tl.float32, bitcast=True)))
        t = tl.math.div_rn(xb, s[:, :, None])
        t = tl.where(zero[:, :, None], 0.0, t)
        t = tl.minimum(tl.maximum(t, -448.0), 448.0)
        code, _ = _to_e4m3(tl.reshape(t, (BM, BK)), HW)
        qm = (rows[:, None] < NP) & (cols[None, :] < KP)
        tl.store(q_ptr + rows[:, None].to(tl.int64) * KP + cols[None, :], code, mask=qm)
        r = rows[:, None]
        c = tk * (BK // 32) + tl.arange(0, BK // 32)[None, :]
        off = (((r // 128) * (C4 // 4) + c // 4) * 32 + r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
        tl.store(s_ptr + off.to(tl.int64), e.to(tl.uint8), mask=c < C4)

    @triton.jit
    def _fp8_dequant_kernel(q_ptr, scale_ptr, out_ptr, numel, KIND: tl.constexpr, BLOCK: tl.constexpr,
                            HW: tl.constexpr):
        s = _round_to(tl.load(scale_ptr), KIND, HW)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = offs < numel
        q = _from_e4m3(tl.load(q_ptr + offs, mask=m, other=0), HW)
        tl.store(out_ptr + offs, _round_to(q * s, KIND, HW).to(out_ptr.dtype.element_ty), mask=m)

    @triton.jit
    def _nvfp4_dequant_kernel(p_ptr, s_ptr, s2_ptr, out_ptr, N, K, KP, C4, KIND: tl.constexpr,
                              BM: tl.constexpr, BK: tl.constexpr, HW: tl.constexpr):
        s2 = tl.load(s2_ptr)
        rows = tl.program_id(0) * BM + tl.arange(0, BM)
        pc = tl.program_id(1) * (BK // 2) + tl.arange(0, BK // 2)
        pm = (rows[:, None] < N) & (pc[None, :] < KP // 2)
        b = tl.load(p_ptr + rows[:, None].to(tl.int64) * (KP // 2) + pc[None, :], mask=pm, other=0).to(tl.int32)
        codes = tl.join(b >> 4, b & 15)                                     # [BM, BK/2, 2]: hi first
        codes = tl.reshape(codes, (BM, BK // 16, 16))
        e = codes & 7
        mag = tl.where(e < 4, e.to(tl.float32) * 0.5, tl.where(e == 4, 2.0, tl.where(e == 5, 3.0,
                                                                 tl.where(e == 6, 4.0, 6.0))))
        val = tl.where((codes & 8) != 0, -mag, mag)
        r = rows[:, None]
        c = tl.program_id(1) * (BK // 16) + tl.arange(0, BK // 16)[None, :]
        off = (((r // 128) * (C4 // 4) + c // 4) * 32 + r % 32) * 16 + ((r % 128) // 32) * 4 + c % 4
        sm = (r < N) & (c < KP // 16)
        bs = _from_e4m3(tl.load(s_ptr + off.to(tl.int64), mask=sm, other=0), HW)
        out = tl.reshape(val * (bs * s2)[:, :, None], (BM, BK))
        cols = tl.program_id(1) * BK + tl.arange(0, BK)
        om = (rows[:, None] < N) & (cols[None, :] < K)
        tl.store(out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                 _round_to(out, KIND, HW).to(out_ptr.dtype.element_ty),
                 mask=om)


# ---- host wrappers ---------------------------------------------------------------------------
def _hw() -> bool:
    return not interpreted()


def _rup(a: int, b: int) -> int:
    return (a + b - 1) // b * b


def _amax_partials(x: torch.Tensor, l2h: int = 0) -> tuple[torch.Tensor, int]:
    """int32 partial maxima of the |x| bit patterns, one per program (no zero-fill, no host sync)."""
    n = x.numel()
    p = max(1, min(CFG["amax_programs"], triton.cdiv(n, AMAX_BLOCK)))
    part = torch.empty(p, dtype=torch.int32, device=x.device)
    if n:
        _amax_kernel[(p,)](x, part, n, BLOCK=AMAX_BLOCK, L2H=l2h, num_warps=8)
    else:
        part.zero_()
    return part, p


_SMS: dict = {}


def _programs(device: torch.device, per_sm: int, ntiles: int) -> int:
    if device.type == "cuda":
        if device not in _SMS:
            _SMS[device] = torch.cuda.get_device_properties(device).multi_processor_count
        sms = _SMS[device]
    else:
        sms = 4                                  # interpreter: a few programs, each looping
    return max(1, min(ntiles, sms * per_sm))


def _check(x: torch.Tensor, dims: int | None = None):
    if x.dtype not in _KIND:
        raise TypeError(f"triton kernels take fp32/bf16/fp16, got {x.dtype}")
    if x.numel() >= 2**31:
        raise ValueError("tensor too large for 32-bit indexing")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"expected a {dims}-D tensor, got {list(x.shape)}")
    return x.contiguous()


def quantize_fp8_async(x: torch.Tensor, scale: torch.Tensor | None = None, hw: bool | None = None):
    """-> (q float8_e4m3fn, scale float32 0-d, amax float32 0-d); nothing waits for the GPU.
    ``scale``: use this decode scale instead of amax/448. The caller checks ``amax`` is finite
    (non-finite input gives garbage codes)."""
    x = _check(x)
    hw = _hw() if hw is None else hw
    part, npart = _amax_partials(x, CFG["fp8_l2"])
    q = torch.empty(x.shape, dtype=torch.float8_e4m3fn, device=x.device)
    given = scale is not None
    if given:
        scale = scale.to(device=x.device, dtype=torch.float32).reshape(()).clone()
    else:
        scale = torch.empty((), dtype=torch.float32, device=x.device)
    amax = torch.empty(1, dtype=torch.int32, device=x.device)
    n = x.numel()
    blk = CFG["fp8_block"]
    ntiles = max(1, triton.cdiv(n, blk))
    grid = (_programs(x.device, CFG["fp8_per_sm"], ntiles),)
    _fp8_kernel[grid](x, q.view(torch.uint8), part, npart, amax, scale, n, ntiles, KIND=_KIND[x.dtype], BLOCK=blk,
                      HW=hw, PBLOCK=_pow2(CFG["amax_programs"]), L2H=CFG["fp8_l2"], GIVEN=given, num_warps=CFG["fp8_warps"])
    return q, scale, amax.view(torch.float32).reshape(())


def quantize_nvfp4_async(x: torch.Tensor, global_scale: torch.Tensor | None = None, hw: bool | None = None):
    """2-D [N, K] -> (packed uint8 [rup(N,16), rup(K,16)/2], swizzled e4m3 scales, s2 float32 0-d,
    amax float32 0-d); nothing waits for the GPU. With ``global_scale`` the amax pass still runs
    (the caller's finiteness check needs it) but s2 is the one given."""
    x = _check(x, 2)
    hw = _hw() if hw is None else hw
    n, k = x.shape
    np_, kp = _rup(n, 16), _rup(k, 16)
    c = kp // 16
    rows_sw, c4 = _rup(np_, 128), _rup(c, 4)
    part, npart = _amax_partials(x, CFG["nv_l2"])
    amax = torch.empty(1, dtype=torch.int32, device=x.device)
    packed = torch.empty((np_, kp // 2), dtype=torch.uint8, device=x.device)
    scales = torch.empty((rows_sw, c4), dtype=torch.float8_e4m3fn, device=x.device)
    if global_scale is not None:
        s2 = global_scale.to(device=x.device, dtype=torch.float32).reshape(()).clone()
    else:
        s2 = torch.empty((), dtype=torch.float32, device=x.device)
    bm, bk = CFG["nv_bm"], CFG["nv_bk"]
    ntm, ntk = rows_sw // bm, triton.cdiv(c4 * 16, bk)
    grid = (_programs(x.device, CFG["nv_per_sm"], ntm * ntk),)
    _nvfp4_kernel[grid](x, packed, scales.view(torch.uint8), part, npart, amax, s2, n, k, np_, kp, c4, rows_sw,
                        ntm, ntk, BM=bm, BK=bk, HW=hw, GIVEN=global_scale is not None, PBLOCK=_pow2(CFG["amax_programs"]), ENC=CFG["nv_enc"],
                        L2H=CFG["nv_l2"], FASTDIV=CFG["nv_fastdiv"],
                        num_warps=CFG["nv_warps"])
    return packed, scales, s2, amax.view(torch.float32).reshape(())


_TINY = {torch.float32: torch.finfo(torch.float32).tiny, torch.bfloat16: torch.finfo(torch.bfloat16).tiny,
         torch.float16: torch.finfo(torch.float16).tiny}


def _hadamard_for(x: torch.Tensor, rot: int):
    if not rot:
        return x                                    # an unused pointer
    from .hadamard import hadamard
    return hadamard(rot, x.dtype, x.device).contiguous()


def quantize_int8_rows_async(x: torch.Tensor, hw: bool | None = None, rot: int = 0):
    """2-D [N, K] -> (q int8 [N, K], scale float32 [N, 1], amax float32 0-d: the largest row amax, for the
    caller's finiteness check); nothing waits for the GPU. ``rot``: rotate by the ConvRot Hadamard of that group
    size inside the kernel (int8-convrot fused) instead of taking an already rotated x."""
    x = _check(x, 2)
    hw = _hw() if hw is None else hw
    n, k = x.shape
    q = torch.empty((n, k), dtype=torch.int8, device=x.device)
    s = torch.empty((n, 1), dtype=torch.float32, device=x.device)
    rows = torch.empty(max(n, 1), dtype=torch.float32, device=x.device)
    if n and k:
        bm, bk, one = _row_tiling(k, rot, "i8")
        _int8_rows_kernel[(triton.cdiv(n, bm),)](x, q, s, rows, _hadamard_for(x, rot), n, k, KIND=_KIND[x.dtype],
                                                 BM=bm, BK=bk, TINY=_TINY[x.dtype], HW=hw, INV127=_INV127, ROT=rot,
                                                 ONEPASS=one, **_launch(rot, "i8"))
    else:
        rows.zero_()
        s.fill_(1e-30)
    return q, s, rows[:n].amax() if n else rows[0]


def _launch(rot: int, key: str) -> dict:
    """num_warps (and, with the rotation inside, num_stages: H stays in shared memory -- 128 KB in bf16 at group 256
    -- so only two x tiles are in flight) of the per-row kernels."""
    if rot:
        return {"num_warps": CFG["rot_warps"], "num_stages": CFG["rot_stages"]}
    return {"num_warps": CFG[f"{key}_warps"]}


def _row_tiling(k: int, rot: int, key: str) -> tuple[int, int, bool]:
    """(rows a program, columns a step, one pass?) of the per-row kernels: a whole row in one tile where
    pow2(K) <= CFG[key_onepass] (rows loaded once), else BK-column steps in two passes; the fused rotation steps one
    ConvRot group at a time (CFG rot_bm rows: tl.dot needs 16, Hopper's wgmma 64)."""
    if rot:
        return max(CFG["rot_bm"], 16), rot, False
    if _pow2(k) <= CFG[f"{key}_onepass"]:
        return CFG[f"{key}_onepass_bm"], _pow2(k), True
    return CFG[f"{key}_bm"], min(CFG[f"{key}_bk"], _pow2(k)), False


_INV127 = float(torch.tensor(1.0) / torch.tensor(127.0))     # torch's fp32 reciprocals of the Python divisors
_INV7 = float(torch.tensor(1.0) / torch.tensor(7.0))
_CMIN_1E10 = {dt: float(torch.tensor(1e-10, dtype=dt).float()) for dt in _KIND}     # clamp(min=1e-10) in each dtype


def quantize_w4a4_rows_async(x: torch.Tensor, hw: bool | None = None, rot: int = 0):
    """2-D [N, K] (K even) -> (packed int8 [N, K/2], scale float32 [N], amax float32 0-d); nothing waits for the
    GPU. ``x`` is the ConvRot-rotated weight (rot=0) or the weight itself, rotated in the kernel (rot=group)."""
    x = _check(x, 2)
    hw = _hw() if hw is None else hw
    n, k = x.shape
    if k % 2:
        raise ValueError(f"w4a4 packs two codes a byte: K={k} is odd")
    p = torch.empty((n, k // 2), dtype=torch.int8, device=x.device)
    s = torch.empty((n,), dtype=torch.float32, device=x.device)
    rows = torch.empty(max(n, 1), dtype=torch.float32, device=x.device)
    if n and k:
        bm, bk, one = _row_tiling(k, rot, "w4")
        _w4a4_rows_kernel[(triton.cdiv(n, bm),)](x, p, s, rows, _hadamard_for(x, rot), n, k, KIND=_KIND[x.dtype],
                                                 BM=bm, BK=max(2, bk), HW=hw, INV7=_INV7, CMIN=_CMIN_1E10[x.dtype],
                                                 ROT=rot, ONEPASS=one, **_launch(rot, "w4"))
    else:
        rows.zero_()
    return p, s, rows[:n].amax() if n else rows[0]


_INV448 = float(torch.tensor(1.0) / torch.tensor(448.0))   # fp32(1/448): torch's divisor-by-a-scalar on CUDA


def quantize_mxfp8_async(x: torch.Tensor, hw: bool | None = None):
    """2-D [N, K] -> (codes float8_e4m3fn [rup(N,32), rup(K,32)], swizzled E8M0 exponents uint8
    [rup(rup(N,32),128), rup(rup(K,32)/32,4)], amax float32 0-d for the caller's finiteness check); one launch
    (plus a 4-byte zero-fill), nothing waits for the GPU."""
    x = _check(x, 2)
    hw = _hw() if hw is None else hw
    n, k = x.shape
    np_, kp = _rup(n, 32), _rup(k, 32)
    rows_sw, c4 = _rup(np_, 128), _rup(kp // 32, 4)
    q = torch.empty((np_, kp), dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty((rows_sw, c4), dtype=torch.uint8, device=x.device)
    amax = torch.zeros(1, dtype=torch.int32, device=x.device)
    bm, bk = CFG["mx_bm"], CFG["mx_bk"]
    ntk = triton.cdiv(c4 * 32, bk)
    _mxfp8_kernel[(triton.cdiv(rows_sw, bm) * ntk,)](x, q.view(torch.uint8), s, amax, n, k, np_, kp, c4, ntk,
                                                     BM=bm, BK=bk, HW=hw, INV448=_INV448, num_warps=CFG["mx_warps"])
    return q, s, amax.view(torch.float32).reshape(())



# ConvRot: the rotation is torch's (cuBLAS: the matmul of kitchen's eager reference -- same operands, dtypes, layouts
# and transposition -- so the same bits) and the per-row kernel runs after it. CFG rot_chunk_kb > 0 rotates a large
# weight in row chunks of about that many KB into one scratch buffer, each chunk quantized right after its matmul
# while the rotated rows are still in L2 (instead of writing the whole rotated weight to HBM and reading it back);
# the chunks' matmuls differ from the whole one only in M (see _rotation_chunks). CFG rot_fused=1 rotates inside the
# kernel (tl.dot: the same bits only where the card's MMA sums like cuBLAS -- a GPU question, off by default).
def _hadamard_t(group: int, x: torch.Tensor) -> torch.Tensor:
    """kitchen's operand: the normalised Hadamard's transposed VIEW (h.T, not a contiguous copy; the matrix is cached)."""
    from .hadamard import hadamard
    return hadamard(group, x.dtype, x.device).T


_L2: dict = {}


def _chunk_kb(device) -> int:
    """CFG rot_chunk_kb, or for -1 the card's L2 size / CFG rot_chunk_l2_div (the interpreter: 0, no chunks)."""
    kb = CFG["rot_chunk_kb"]
    if kb >= 0:
        return kb
    if device is None or torch.device(device).type != "cuda":
        return 0
    if device not in _L2:
        _L2[device] = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) // 1024
    return _L2[device] // max(1, CFG["rot_chunk_l2_div"])


def _rotation_chunks(n: int, k: int, itemsize: int, device=None) -> list[tuple[int, int]]:
    """Row ranges of the chunked rotation: one range (the whole weight, kitchen's own matmul) when the chunk size
    (_chunk_kb) is 0 or the weight is at most that size; else ceil(bytes / chunk) ranges whose sizes differ by less
    than 32 rows, never a short tail: every chunk's matmul has M = rows x K / group in the same
    large-M range as the whole weight's (the bench records which cuBLAS kernel each M gets)."""
    kb = _chunk_kb(device)
    total = n * k * itemsize
    if kb <= 0 or total <= kb << 10 or n < 32:
        return [(0, n)]
    parts = min(n // 16, -(-total // (kb << 10)))
    cuts = [i * n // parts // 16 * 16 for i in range(parts)] + [n]     # starts at multiples of 16 rows: 16-byte
    return [(a, b) for a, b in zip(cuts, cuts[1:])]                      # aligned pointers, sizes within 32 rows


from .hadamard import rotate_chunk  # noqa: E402  (the chunk rotation lives with the rotation; re-exported)


def _rotated(x: torch.Tensor, group: int):
    if CFG["rot_fused"] and x.dtype != torch.float32:       # fp32: cuBLAS sums with FMAs, not an MMA -- no fusing
        return x, group
    return rotate_chunk(x, group), 0


def quantize_int8_convrot_async(x: torch.Tensor, group: int, hw: bool | None = None):
    """int8 ConvRot: (q int8 [N, K] of the rotated weight, scale float32 [N, 1], amax); no host sync."""
    x = _check(x, 2)
    n, k = x.shape
    if k % group:
        raise ValueError(f"K={k} is not divisible by the ConvRot group size {group}")
    fused = CFG["rot_fused"] and x.dtype != torch.float32
    chunks = _rotation_chunks(n, k, x.element_size(), x.device) if not fused and n and k else [(0, n)]
    if len(chunks) == 1:
        r, rot = _rotated(x, group)
        return quantize_int8_rows_async(r, hw=hw, rot=rot)
    hw = _hw() if hw is None else hw
    q = torch.empty((n, k), dtype=torch.int8, device=x.device)
    s = torch.empty((n, 1), dtype=torch.float32, device=x.device)
    rows = torch.empty(n, dtype=torch.float32, device=x.device)
    per = k // group                                   # rows of the [n * k / group, group] view per weight row
    buf = torch.empty((max(b - a for a, b in chunks) * per, group), dtype=x.dtype, device=x.device)   # one scratch
    xa, ht = x.view(n * per, group), _hadamard_t(group, x)
    bm, bk, one = _row_tiling(k, 0, "i8")
    kw = dict(KIND=_KIND[x.dtype], BM=bm, BK=bk, TINY=_TINY[x.dtype], HW=hw, INV127=_INV127, ROT=0, ONEPASS=one,
              num_warps=CFG["i8_warps"])
    for r0, r1 in chunks:                              # per chunk: one cuBLAS call, one kernel launch
        m = r1 - r0
        r = torch.mm(xa[r0 * per:r1 * per], ht, out=buf[:m * per])
        _int8_rows_kernel[(triton.cdiv(m, bm),)](r, q[r0:r1], s[r0:r1], rows[r0:r1], r, m, k, **kw)
    return q, s, rows.amax()


def quantize_w4a4_convrot_async(x: torch.Tensor, group: int, hw: bool | None = None):
    """W4A4 ConvRot: (packed int8 [N, K/2], scale float32 [N], amax); no host sync."""
    r, rot = _rotated(_check(x, 2), group)
    return quantize_w4a4_rows_async(r, hw=hw, rot=rot)

def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32,
                   hw: bool | None = None) -> torch.Tensor:
    hw = _hw() if hw is None else hw
    q = q.contiguous()
    out = torch.empty(q.shape, dtype=dtype, device=q.device)
    n = q.numel()
    if n:
        s = scale.to(device=q.device, dtype=torch.float32).reshape(1)
        _fp8_dequant_kernel[(triton.cdiv(n, FP8_BLOCK),)](q.view(torch.uint8), s, out, n, KIND=_KIND[dtype],
                                                          BLOCK=FP8_BLOCK, HW=hw, num_warps=8)
    return out


def dequantize_nvfp4(packed: torch.Tensor, scales: torch.Tensor, s2: torch.Tensor, n: int, k: int,
                     dtype: torch.dtype = torch.float32, hw: bool | None = None) -> torch.Tensor:
    hw = _hw() if hw is None else hw
    if dtype not in _KIND:
        raise TypeError(f"dequantize to fp32/bf16/fp16, not {dtype}")
    packed = packed.contiguous()
    kp = packed.shape[1] * 2
    c4 = scales.shape[1]
    out = torch.empty((n, k), dtype=dtype, device=packed.device)
    if n and k:
        sc = scales.contiguous().view(torch.uint8)
        s2t = s2.to(device=packed.device, dtype=torch.float32).reshape(1)
        grid = (triton.cdiv(n, NV_BM), triton.cdiv(k, NV_BK))
        _nvfp4_dequant_kernel[grid](packed, sc, s2t, out, n, k, kp, c4, KIND=_KIND[dtype], BM=NV_BM, BK=NV_BK, HW=hw, num_warps=4)
    return out
