"""Per-output-channel (row) and per-16-block error bounds derived from the number formats.

A whole-tensor error limit passes a layer with a few broken output channels (two rows swapped, one
negated, a row's nibbles swapped: rel. error 0.05-0.15 over the tensor, 1.0-2.0 on those rows). The
format itself bounds every element's error, whatever rounding a converter chose, as long as each
value was encoded as one of the two representable neighbours under the file's own scales:

* fp8 e4m3fn with per-tensor scale ``s``: neighbours are at most one spacing apart, and the spacing
  is <= |x|/8 for normal values and s*2**-9 for subnormals; values above 448*s clamp. So
  ``|x_hat - x| <= max(|x| - 448 s, 0) + max(|x|/8, s 2**-9)`` -- twice the round-to-nearest worst case;
  per row ``sum max(x^2/64, s^2 2**-18) <= |x|^2/64 + k s^2 2**-18`` comes from the row norm.
* nvfp4 with block scale ``u = block_scale * weight_scale_2``: E2M1 magnitudes {0,.5,1,1.5,2,3,4,6}*u
  are spaced .5u below 2u, 1u below 4u, 2u above (each <= max(|x|, u)/2); values above 6u clamp.
  So ``|x_hat - x| <= max(|x| - 6u, 0) + max(|x|, u)/2``.

A row (fp8) or a 16-element block (nvfp4) whose squared error exceeds the sum of its elements'
squared bounds was not encoded from these source values: swapped, negated, zeroed rows, nibbles in
the wrong order. Good files (any neighbour rounding, RTN or learned) cannot trip it.
"""
from __future__ import annotations

import torch

SLACK = 1.0 + 1e-3          # float32 arithmetic of the dequantizer and of this check
ROW_CHUNK_ELEMS = 1 << 20   # rows are checked in chunks of about 1M elements (bounded memory)


def fp8_bad_rows(codes_u8: torch.Tensor, table: torch.Tensor, scale: float, ref: torch.Tensor,
                 max_report: int = 0, totals: list | None = None) -> tuple[list[int], int, tuple | None]:
    """Rows of an fp8 weight (codes [n, k], ``table`` = the dequantizer's value of each of the 256
    codes at this scale, float32) whose error against ``ref`` [n, k] exceeds the format's bound.
    Returns (first bad rows, number of bad rows, (worst row, its rel. error, its rel. bound)).
    ``totals``: a list that receives (|ref|^2, |decoded|^2, |decoded - ref|^2) of the whole tensor
    (float64 sums of the per-row values: the tensor metrics without another pass)."""
    n, k = codes_u8.shape
    step = max(1, ROW_CHUNK_ELEMS // max(1, k))
    table = table.to(device=codes_u8.device, dtype=torch.float32)
    st = torch.tensor(scale, dtype=torch.float32, device=codes_u8.device)
    # the dequantizer's table equals e4m3 -> float32 times the scale (true for kitchen's eager
    # dequantizer): then decode by a dtype cast instead of a gather (5x faster); else gather
    direct = torch.arange(256, dtype=torch.uint8, device=codes_u8.device).view(torch.float8_e4m3fn).float() * st
    fast = bool(torch.equal(torch.nan_to_num(direct, nan=0.0), torch.nan_to_num(table, nan=0.0)))
    sub2 = (scale * 2.0 ** -9) ** 2
    clamp_at = 448.0 * scale
    bad, count, worst = [], 0, None
    t_na2 = t_nb2 = t_err2 = 0.0
    for r0 in range(0, n, step):
        c = codes_u8[r0:r0 + step]
        x = ref[r0:r0 + step].to(torch.float32, copy=True)
        if fast:
            got = c.view(torch.float8_e4m3fn).to(torch.float32).mul_(st)
        else:
            got = table[c.reshape(-1).long()].reshape(c.shape)
        if totals is not None:
            t_nb2 += float(torch.linalg.vector_norm(got, dtype=torch.float64) ** 2)
        err2 = got.sub_(x).square_().sum(1)
        del got
        lo_hi = torch.aminmax(x) if x.numel() else None
        amax = max(-float(lo_hi.min), float(lo_hi.max)) if lo_hi is not None else 0.0
        if amax > clamp_at:              # values above 448 * scale clamp: their excess is allowed too
            ax = x.abs()
            norms2 = ax.square().sum(1)
            b = torch.clamp(ax - clamp_at, min=0.0).add_(torch.clamp(ax / 8.0, min=sub2 ** 0.5))
            bound2 = b.square_().sum(1)
        else:                            # sum max(x^2/64, sub^2) <= |x|^2/64 + k sub^2: from the row norm
            norms2 = torch.linalg.vector_norm(x, dim=1).square_()
            bound2 = norms2 / 64.0 + x.shape[1] * sub2
        if totals is not None:
            t_na2 += float(norms2.double().sum())
            t_err2 += float(err2.double().sum())
        bound2 = bound2.mul_(SLACK ** 2).add_(1e-30)
        over = err2 > bound2
        if bool(over.any()):
            rows = torch.nonzero(over).reshape(-1)
            count += int(rows.numel())
            if len(bad) < max_report:
                bad += [r0 + int(r) for r in rows[:max_report - len(bad)]]
            ratio = err2[rows] / bound2[rows]
            i = int(torch.argmax(ratio))
            r = int(rows[i])
            if worst is None or float(ratio[i]) > worst[3]:
                nr = max(float(norms2[r]), 1e-30)
                worst = (r0 + r, (float(err2[r]) / nr) ** 0.5, (float(bound2[r]) / nr) ** 0.5, float(ratio[i]))
    if totals is not None:
        totals[:] = [t_na2, t_nb2, t_err2]
    return bad, count, None if worst is None else worst[:3]


def nvfp4_bad_blocks(got: torch.Tensor, ref: torch.Tensor, block_scales_logical: torch.Tensor, s2: float,
                     max_report: int = 0) -> tuple[list[int], int, int, tuple[int, float, float] | None]:
    """Blocks of 16 along K whose error exceeds the E2M1 bound under their own block scale.
    ``got``/``ref`` [n, k] float32 (dequantized / source), ``block_scales_logical`` [>=n, >=ceil(k/16)]
    (unswizzled, any float dtype). Returns (first bad rows, number of bad rows, number of bad
    blocks, (worst row, its rel. error, its rel. bound))."""
    n, k = ref.shape
    kp = -(-k // 16) * 16
    step = max(1, ROW_CHUNK_ELEMS // max(1, kp))
    bad_rows, n_rows, n_blocks, worst = [], 0, 0, None
    for r0 in range(0, n, step):
        x = ref[r0:r0 + step].to(torch.float32)
        g = got[r0:r0 + step].to(torch.float32)
        if kp != k:
            x = torch.nn.functional.pad(x, (0, kp - k))
            g = torch.nn.functional.pad(g, (0, kp - k))
        m = x.shape[0]
        x = x.reshape(m, kp // 16, 16)
        g = g.reshape(m, kp // 16, 16)
        u = (block_scales_logical[r0:r0 + m, : kp // 16].to(torch.float32) * s2).unsqueeze(-1)
        err2 = (g - x).pow(2).sum(-1)
        ax = x.abs()
        # gap(|x|/u) * u <= max(|x|, u) / 2 (0.5u below 2u, 1u below 4u, 2u above: each <= max(|x|,u)/2)
        b = torch.maximum(ax, u).mul_(0.5).add_(torch.clamp(ax - 6.0 * u, min=0.0))
        bound2 = b.square_().sum(-1) * SLACK ** 2 + 1e-30
        over = err2 > bound2
        if bool(over.any()):
            n_blocks += int(over.sum())
            rows = torch.nonzero(over.any(-1)).reshape(-1)
            n_rows += int(rows.numel())
            if len(bad_rows) < max_report:
                bad_rows += [r0 + int(r) for r in rows[:max_report - len(bad_rows)]]
            re2, rb2, rn2 = err2.sum(-1), bound2.sum(-1), ax.pow(2).sum((-1, -2)).clamp(min=1e-30)
            ratio = re2[rows] / rb2[rows]
            i = int(torch.argmax(ratio))
            r = int(rows[i])
            if worst is None or float(ratio[i]) > worst[3]:
                worst = (r0 + r, float((re2[r] / rn2[r]).sqrt()), float((rb2[r] / rn2[r]).sqrt()), float(ratio[i]))
    return bad_rows, n_rows, n_blocks, None if worst is None else worst[:3]


def bound_rows(got: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor, max_report: int = 0,
               block: int | None = None) -> tuple[list[int], int, tuple | None, int | None]:
    """Rows whose squared error (``got`` - ``ref``, float32 [n, k]) exceeds the sum of their elements' squared
    bounds (``bound`` [n, k], the format object's ``elem_bound``: in the codes' own basis, which for the ConvRot
    formats is the rotated one -- an orthogonal rotation keeps every row's error norm). ``block``: also count
    the blocks of that many elements along K over their bound (formats whose scales are per block, with the
    error measured in the same basis). Returns (first bad rows, number of bad rows, (worst row, its rel. error,
    its rel. bound), number of bad blocks or None)."""
    err = got - ref
    err2 = err.square().sum(1)
    b2 = bound.square()
    bound2 = b2.sum(1).mul_(SLACK ** 2).add_(1e-30)
    over = err2 > bound2
    n_blocks = None
    if block:
        n, k = ref.shape
        kp = -(-k // block) * block
        e2, bb2 = err.square(), b2
        if kp != k:
            e2 = torch.nn.functional.pad(e2, (0, kp - k))
            bb2 = torch.nn.functional.pad(bb2, (0, kp - k))
        n_blocks = int((e2.view(n, -1, block).sum(-1) > bb2.view(n, -1, block).sum(-1) * SLACK ** 2 + 1e-30).sum())
    if not bool(over.any()):
        return [], 0, None, n_blocks
    rows = torch.nonzero(over).reshape(-1)
    ratio = err2[rows] / bound2[rows]
    r = int(rows[int(torch.argmax(ratio))])
    nr = max(float(ref[r].square().sum()), 1e-30)
    worst = (r, (float(err2[r]) / nr) ** 0.5, (float(bound2[r]) / nr) ** 0.5)
    return [int(x) for x in rows[:max_report]], int(rows.numel()), worst, n_blocks


def describe(kind: str, bad_rows: list[int], n_bad: int, n_rows: int, worst, n_blocks: int | None = None,
             block: int = 16) -> str:
    shown = ", ".join(map(str, bad_rows[:8])) + (", ..." if n_bad > len(bad_rows[:8]) else "")
    blocks = f", {n_blocks} blocks of {block}" if n_blocks is not None else ""
    w = ""
    if worst is not None:
        w = f"; worst row {worst[0]}: rel. error {worst[1]:.3g} > its worst case {worst[2]:.3g}"
    return (f"{n_bad} of {n_rows} output channels (rows {shown}{blocks}) exceed the {kind} format's worst-case "
            f"error for their values{w}: swapped, negated or zeroed rows, or nibbles in the wrong order")
