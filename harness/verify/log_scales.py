"""Verify rule: per-tensor scales stored as 8-bit log codes (see :mod:`quant.log_scales`).

ComfyUI cannot load such a file correctly (it reads the U8 code as the scale's value and never looks
for a scale shared through a parent module), so this is an error that names the repair command."""
from __future__ import annotations

from quant import log_scales

from .findings import Findings

RULE = "scale.log8"


def run(st, f: Findings) -> None:
    plan = log_scales.find(st.infos)
    if not plan.coded:
        return
    shared = [c for c in plan.coded if c.shared]
    msg = ("per-tensor scales are stored as 8-bit log codes (U8, 1e-10..100, 255 levels)"
           + (f", {len(shared)} of them shared by related layers" if shared else "")
           + ": ComfyUI cannot load this file correctly (it takes code N as scale N.0 and ignores shared "
             f"scales); expand them into F32 scales with 'quantgate repair {st.src.path} -o OUT.safetensors'")
    f.error(RULE, msg, sorted(plan.layers))
