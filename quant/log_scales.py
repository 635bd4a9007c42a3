"""Per-tensor scales stored as 8-bit log codes, and their repair into ComfyUI-loadable F32 scales.

Some converters (an older learned-rounding one among them) store each fp8 weight's per-tensor scale not
as a float but as a uint8 code on a log scale: 255 levels spanning 1e-10 ... 100, i.e.

    scale(code) = 10 ** (LOG_MIN + code * (LOG_MAX - LOG_MIN) / (LEVELS - 1)),  code = 0 ... 254

(12 decades in 254 steps: neighbouring codes differ by x1.115). Code 255 is outside the 255 levels and
is rejected. Optionally one scale is **shared** by related tensors (e.g. q/k/v/o of an attention block):
it is stored once under the parent module, ``<parent>.scale_weight`` (or ``.weight_scale``), and the
fp8 weights below ``<parent>.`` that have no scale of their own use it.

ComfyUI reads neither: it copies the U8 code into its float32 scale parameter (code 187 becomes a scale
of 187.0), and it never looks for a parent's shared scale (the layers keep the default scale 1). Such a
file renders noise. :func:`repair` writes a copy in which every layer has its own F32 scale with the
decoded value (``scale_weight`` F32 [1] for the legacy marker layout, ``weight_scale`` F32 [] for the
comfy_quant layout), drops the code tensors and keeps every other tensor byte-for-byte.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

LOG_MIN, LOG_MAX, LEVELS = -10.0, 2.0, 255           # 1e-10 ... 100, 255 levels
SCALE_SUFFIXES = ("scale_weight", "weight_scale")
FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
STEP = (LOG_MAX - LOG_MIN) / (LEVELS - 1)


def decode(code: torch.Tensor) -> torch.Tensor:
    """uint8 codes -> float32 scales (float64 math, then rounded once to float32)."""
    import torch            # lazily: header-only verify reads this module without torch
    c = code.to(torch.float64)
    return torch.pow(10.0, LOG_MIN + c * STEP).to(torch.float32)


def encode(scale: torch.Tensor | float, *, ceil: bool = True) -> torch.Tensor:
    """float scales -> uint8 codes. ``ceil`` rounds up (the decoded scale is >= the requested one, so
    weights divided by it never clip): what a converter that stores codes must quantize with."""
    import torch
    s = torch.as_tensor(scale, dtype=torch.float64)
    x = (torch.log10(s.clamp(min=10 ** LOG_MIN, max=10 ** LOG_MAX)) - LOG_MIN) / STEP
    x = torch.ceil(x - 1e-9) if ceil else torch.round(x)
    return x.clamp(0, LEVELS - 1).to(torch.uint8)


@dataclass
class CodedScale:
    key: str                    # the U8 tensor holding the code
    layers: list[str]           # layers (module paths) whose weight it scales
    shared: bool


@dataclass
class Plan:
    coded: list[CodedScale] = field(default_factory=list)
    out_suffix: str = "scale_weight"

    @property
    def layers(self) -> dict[str, CodedScale]:
        return {la: c for c in self.coded for la in c.layers}


def find(infos: dict) -> Plan:
    """Find log-coded scales from tensor infos (name -> object with .dtype/.shape). Header only."""
    plan = Plan()
    weights = {k[: -len(".weight")]: i for k, i in infos.items() if k.endswith(".weight")}
    fp8_layers = {la for la, i in weights.items() if i.dtype in FP8_DTYPES}
    own: set[str] = set()
    parents: list[tuple[str, str]] = []
    suffixes_seen = set()
    for k, i in infos.items():
        if "." not in k:
            continue
        prefix, suf = k.rsplit(".", 1)
        if suf not in SCALE_SUFFIXES or i.dtype != "U8" or math.prod(i.shape) != 1:
            continue
        if prefix in fp8_layers:
            plan.coded.append(CodedScale(k, [prefix], False))
            own.add(prefix)
            suffixes_seen.add(suf)
        elif prefix not in weights:
            parents.append((k, prefix))
            suffixes_seen.add(suf)
    # layers with a float scale of their own are not covered by a shared one
    for k, i in infos.items():
        if "." in k:
            prefix, suf = k.rsplit(".", 1)
            if suf in SCALE_SUFFIXES and prefix in fp8_layers:
                own.add(prefix)
    for k, prefix in sorted(parents, key=lambda p: -len(p[1])):      # innermost parent first
        members = sorted(la for la in fp8_layers - own if la.startswith(prefix + "."))
        if members:
            plan.coded.append(CodedScale(k, members, True))
            own.update(members)
    if suffixes_seen:
        plan.out_suffix = "weight_scale" if suffixes_seen == {"weight_scale"} else "scale_weight"
    return plan


def repair(src_path, out_path, *, force: bool = False, progress=None) -> dict:
    """Write ``out_path``: ``src_path`` with every log-coded scale expanded to an F32 scale per layer."""
    from .safetensors_io import AtomicWriter, safetensors_order
    from .sources import open_source
    src_p, out_p = Path(src_path), Path(out_path)
    from .outputs import check_output
    with open_source(src_p) as src:
        check_output(out_p, [src_p, *src.files], overwrite=force)   # never over the input or a shard of it
        infos = {k: src.info(k) for k in src.keys()}
        plan = find(infos)
        if not plan.coded:
            raise InputError("no 8-bit log-coded scales found (nothing to repair)", src_p)
        codes = {}
        for c in plan.coded:
            code = src.get(c.key).reshape(-1)
            v = int(code[0])
            if v >= LEVELS:
                raise InputError(f"{c.key} holds code {v}, outside the {LEVELS} levels (0..{LEVELS - 1})", src_p)
            codes[c.key] = code[:1]
        drop = {c.key for c in plan.coded}
        shape = (1,) if plan.out_suffix == "scale_weight" else ()
        new_scales: dict[str, torch.Tensor] = {}
        for la, c in plan.layers.items():
            new_scales[f"{la}.{plan.out_suffix}"] = decode(codes[c.key]).reshape(shape)
        clash = [k for k in new_scales if k in infos and k not in drop]
        if clash:
            raise InputError(f"{clash[0]} exists and a shared log-coded scale covers it too", src_p)
        entries = [(k, infos[k].dtype, tuple(infos[k].shape)) for k in infos if k not in drop]
        entries += [(k, "F32", shape) for k in new_scales]
        entries = safetensors_order(entries)
        meta = dict(src.metadata)
        with AtomicWriter(out_p, entries, meta or None) as w:
            for name, _, _ in entries:
                t = new_scales[name] if name in new_scales else src.get(name)
                w.write(name, t)
                if progress:
                    progress(name)
    return {"input": str(src_p), "output": str(out_p), "coded_scales": len(plan.coded),
            "shared": sum(c.shared for c in plan.coded), "layers": len(plan.layers), "suffix": plan.out_suffix,
            "scales": {k: float(v.reshape(-1)[0]) for k, v in new_scales.items()}}
