"""Budgeted mixes (``convert --budget-bits B``): each layer the preset quantizes gets NVFP4, FP8 or its source
precision (and INT8 per row when ``--comfy-version`` targets a ComfyUI that loads it) by measured sensitivity, so that the stored bits per weight of those layers stay <= B.

Cost of a choice = the bytes it stores for the layer's weight: NVFP4 packed codes + e4m3 block scales (with
the swizzle padding) + the F32 global scale (4.5 bits a weight on aligned shapes), FP8 one byte a weight + the
F32 scale, source precision its own dtype. Budget = B/8 x the weights of those layers. (Layers the preset
keeps -- embeddings, head, modulation, detection layers -- stay as they are, outside the budget.)

Sensitivity (``metric``) of a choice = the squared error it causes:
  * ``"output"`` (with recorded activations X of the layer): ||X_q W_q^T - X W^T||^2 / M, the layer's output
    error with the format's activation quantization as ComfyUI runs it natively (NVFP4: dynamic per-16
    blocks; FP8: per tensor, amax/448) -- the error of a Blackwell (NVFP4) / Ada+ (FP8) forward pass;
  * ``"weight"``: ||W_q - W||^2 (what the pooled weight SQNR of the ladder counts).
Source precision costs no error. The allocation starts every layer at the cheapest choice (NVFP4) and
repeatedly takes the upgrade (to any dearer choice of one layer) with the largest error removed per byte
that still fits, until none fits: the greedy solution of the multiple-choice knapsack, exact whenever each
layer's (bytes, error) choices are convex. Each decision carries the numbers that made it (the plan's reason).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

ACTIONS = ("nvfp4", "fp8", "int8", "keep")     # in order of bytes (int8: + F32 row scales)
BASE_ACTIONS = ("nvfp4", "fp8", "keep")          # offered unless the target ComfyUI loads int8 (see apply)
EXTRA_ACTIONS = tuple(a for a in ACTIONS if a not in BASE_ACTIONS)   # measured only when offered


def _nvfp4_bytes(n: int, k: int, itemsize: int) -> int:
    from .kernels.facts import packed_shape, scale_shape
    p, s = packed_shape(n, k), scale_shape(n, k)
    return p[0] * p[1] + s[0] * s[1] + 4


_BYTES = {"nvfp4": _nvfp4_bytes,
          "fp8": lambda n, k, itemsize: n * k + 4,
          "int8": lambda n, k, itemsize: n * k + 4 * n,
          "keep": lambda n, k, itemsize: n * k * itemsize}
CHEAPEST = ACTIONS[0]


def stored_bytes(action: str, shape: tuple, src_itemsize: int) -> int:
    """Bytes a layer's weight stores as ``action`` (NVFP4 with its padded scales, FP8, the source dtype)."""
    return _BYTES[action](int(shape[0]), int(shape[1]), int(src_itemsize))


@dataclass
class Choice:
    layer: str
    numel: int
    bytes: dict                                     # action -> bytes
    err: dict                                       # action -> squared error
    ref: float                                      # ||W||^2 or ||X W^T||^2 / M (for dB in the reason)
    action: str = "nvfp4"
    reason: str = ""

    def db(self, action) -> float:
        e = self.err[action]
        return math.inf if e <= 0 else 10 * math.log10(self.ref / e) if self.ref > 0 else -math.inf


@dataclass
class Allocation:
    budget_bits: float
    metric: str
    choices: list = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(c.bytes[c.action] for c in self.choices)

    @property
    def bits_per_weight(self) -> float:
        n = sum(c.numel for c in self.choices)
        return 8.0 * self.bytes / n if n else 0.0

    def counts(self) -> dict:
        out: dict = {}
        for c in self.choices:
            out[c.action] = out.get(c.action, 0) + 1
        return out

    def as_dict(self) -> dict:
        return {"budget_bits": self.budget_bits, "metric": self.metric, "bits_per_weight": round(self.bits_per_weight, 4),
                "bytes": self.bytes, "counts": self.counts(),
                "layers": {c.layer: {"action": c.action, "reason": c.reason} for c in self.choices}}


def _fmt_db(x: float) -> str:
    return "exact" if math.isinf(x) and x > 0 else f"{x:.1f} dB"


def allocate(choices: list[Choice], budget_bits: float, metric: str = "output") -> Allocation:
    """Pick each layer's action (see the module doc). Raises ValueError when even all-NVFP4 exceeds the budget."""
    total = sum(c.numel for c in choices)
    budget = budget_bits / 8.0 * total
    for c in choices:
        c.action = CHEAPEST
    used = sum(c.bytes[CHEAPEST] for c in choices)
    if used > budget + 1e-9:
        raise ValueError(f"--budget-bits {budget_bits:g} is below NVFP4's own size here "
                         f"({8.0 * used / total:.3f} bits a weight with its scales)")
    ratio_at: dict = {}
    while True:
        best = None
        for c in choices:
            for a in c.err:
                db = c.bytes[a] - c.bytes[c.action]
                de = c.err[c.action] - c.err[a]
                if db <= 0 or used + db > budget + 1e-9 or de <= 0:
                    continue
                r = de / db
                if best is None or r > best[0]:
                    best = (r, c, a, db)
        if best is None:
            break
        r, c, a, db = best
        ratio_at[c.layer] = (c.action, a, r)
        c.action = a
        used += db
    # the error-per-byte every upgrade had to beat: the best upgrade left out (for the reasons)
    left = []
    for c in choices:
        for a in c.err:
            db = c.bytes[a] - c.bytes[c.action]
            de = c.err[c.action] - c.err[a]
            if db > 0 and de > 0:
                left.append(de / db)
    bar = max(left) if left else 0.0
    for c in choices:
        opts = ", ".join(f"{a} {_fmt_db(c.db(a))}" for a in c.err if a != "keep")
        if c.action == CHEAPEST:
            why = "upgrade did not fit the budget" if bar else "nothing dearer helps"
        else:
            frm, to, r = ratio_at.get(c.layer, (CHEAPEST, c.action, 0.0))
            why = f"{frm} -> {to} removes {r:.3g} error/byte"
        c.reason = (f"--budget-bits {budget_bits:g} ({metric} error): {opts}; {why}")
    return Allocation(budget_bits, metric, choices)


def _int8_rows(x):
    """Dynamic int8 per row as ComfyUI's int8 path runs activations (amax/127 a row, rounded), dequantized."""
    import torch
    s = (x.abs().amax(-1, keepdim=True) / 127.0).clamp(min=1e-30)
    return torch.round(x / s).clamp(-128, 127) * s


def measure(layers, load, *, rows=None, metric: str = "output", nvfp4=None, src_itemsize: int = 2,
            device: str = "cpu", progress: bool = False, actions=BASE_ACTIONS) -> list[Choice]:
    """Sensitivities of ``layers`` = [(name, layer, shape)]: ``load(name)`` reads a weight; ``rows(layer)``
    gives its recorded activations [M, K] (``metric="output"``; None -> weight metric for that layer);
    ``nvfp4(w) -> (packed, block scales, s2)`` is the NVFP4 quantizer the conversion will use (default RTN)."""
    import torch

    from .kernels import fp8 as _fp8
    from .kernels import nvfp4 as _nv
    nvq = nvfp4 or _nv.quantize
    out = []
    it = layers
    if progress:
        from tqdm import tqdm
        it = tqdm(layers, desc="budget: sensitivity", unit="layer", leave=False, dynamic_ncols=True)
    for name, layer, shape in it:
        w = load(name).to(device=device)
        wf = w.to(torch.float32)
        p, bs, s2 = nvq(w)
        d_nv = _nv.dequantize(p, bs, s2, tuple(wf.shape))
        q8, s8 = _fp8.quantize(w)
        d_f8 = _fp8.dequantize(q8, s8)
        d_i8 = None
        if any(a in actions for a in EXTRA_ACTIONS):      # int8, the one extra today
            from .formats import int8 as _i8
            d_i8 = _i8.dequantize_rowwise(*_i8.quantize_rowwise(w), torch.float32)
        x = rows(layer) if (rows is not None and metric == "output") else None
        if x is None:
            err = {"nvfp4": float((d_nv - wf).double().pow(2).sum()), "fp8": float((d_f8 - wf).double().pow(2).sum())}
            if d_i8 is not None:
                err["int8"] = float((d_i8 - wf).double().pow(2).sum())
            ref = float(wf.double().pow(2).sum())
        else:
            x = x.to(device=device, dtype=torch.float32)
            y = x @ wf.T
            xa, xs, x2 = _nv.quantize(x)
            xn = _nv.dequantize(xa, xs, x2, tuple(x.shape))
            xq8, xs8 = _fp8.quantize(x)
            x8 = _fp8.dequantize(xq8, xs8)
            m = max(1, x.shape[0])
            err = {"nvfp4": float((xn @ d_nv.T - y).double().pow(2).sum()) / m,
                   "fp8": float((x8 @ d_f8.T - y).double().pow(2).sum()) / m}
            if d_i8 is not None:
                err["int8"] = float((_int8_rows(x) @ d_i8.T - y).double().pow(2).sum()) / m
            ref = float(y.double().pow(2).sum()) / m
        err["keep"] = 0.0
        b = {a: stored_bytes(a, shape, src_itemsize) for a in err}
        out.append(Choice(layer, int(shape[0]) * int(shape[1]), b, err, ref))
    return out


def offered_actions(req) -> tuple:
    """NVFP4 / FP8 / source precision; plus INT8 (per-row scales: ~43 dB weight SQNR at 8 bits vs FP8's ~31.5)
    when the conversion targets a ComfyUI that loads int8_tensorwise (``--comfy-version`` >= its first version)
    and the rounding is not ``learned`` (learned rounding knows the NVFP4 / FP8 grids only). Without
    ``--comfy-version`` the file keeps NVFP4's own ComfyUI minimum."""
    from .comfy.versions import version_lt
    from .formats import get
    v = getattr(req.plan, "comfy_version", None)
    if not v or req.rounding.learned or version_lt(v, get("int8").min_comfy) is not False:
        return BASE_ACTIONS
    return ACTIONS


def apply(the_plan, src, req) -> Allocation:
    """``convert --budget-bits``: re-decide every layer the plan quantizes (NVFP4 / FP8 / source precision)
    by :func:`allocate` on measured sensitivities (the output metric on ``req.rounding.samples`` when given,
    else the weight metric; NVFP4 measured with the conversion's scale search). Rewrites the plan's decisions
    in place (each with its reason) and sets ``the_plan.budget``."""
    import dataclasses

    from .errors import OptionError
    if req.format.kernel != CHEAPEST:
        raise OptionError(f"{{budget_bits}} mixes NVFP4, FP8 and source precision: it goes with {{target}} "
                          f"{CHEAPEST}, not {req.format.name}")
    q = [d for d in the_plan.quantized() if len(d.shape) == 2]
    samples = None
    if req.rounding.samples:
        from .activations.samples import ActivationSamples
        samples = ActivationSamples(req.rounding.samples, req.rounding.rows, req.rounding.seed)
    nvq = None
    if req.rounding.scale_search:
        from .rounding import scale_search
        nvq = scale_search.quantize              # the weight-error search (the output one needs each layer's H)
    from .dtypes import DTYPE_BYTES
    actions = offered_actions(req)
    k_of = {d.layer: int(d.shape[1]) for d in q}
    try:
        rows = (lambda layer: samples.rows(layer, k_of[layer]) if layer in samples else None) if samples else None
        choices = measure([(d.name, d.layer, tuple(d.shape)) for d in q], src.get, rows=rows,
                          metric="output" if samples else "weight", nvfp4=nvq,
                          src_itemsize=max((DTYPE_BYTES.get(d.dtype, 2) for d in q), default=2),
                          device=str(req.device), progress=req.output.progress, actions=actions)
    finally:
        if samples is not None:
            samples.close()
    bits = req.plan.budget_bits
    if bits == "preset":                         # the preset's own mix, re-decided at the same size
        bits = 8.0 * sum(c.bytes[d.action] for c, d in zip(choices, q)) / max(1, sum(c.numel for c in choices))
    try:
        al = allocate(choices, bits, "output" if samples else "weight")
    except ValueError as e:
        raise OptionError("{budget_bits}: " + str(e).split(" ", 1)[1]) from None
    by_layer = {c.layer: c for c in al.choices}
    for i, d in enumerate(the_plan.decisions):
        c = by_layer.get(d.layer) if d in q else None
        if c is not None:
            the_plan.decisions[i] = dataclasses.replace(d, action=c.action, reason=c.reason)
    the_plan.budget = al
    return al

