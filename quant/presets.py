"""Presets: data (``presets/*.toml``) that decide, per tensor, ``keep | fp8 | nvfp4``.

A preset is an ordered list of rules; the first rule whose ``match`` globs (fnmatch, ``*`` crosses
dots) and conditions fit a tensor decides it. A tensor that no rule covers is an error: presets
must resolve every tensor of their model's real layout (tests check this against quant.arch).

Rule keys:
  match      = ["glob", ...]                     required
  action     = "keep" | "quant"                  "quant" = the --format being written
  nvfp4      = "fp8" | "keep"                    optional: what "quant" means when --format nvfp4
  ndim       = 2                                 optional condition on the tensor rank
  min_numel  = 4096                              optional: smaller tensors are kept instead
  reason     = "why"                             shown by `quantgate plan`
  gguf       = "Q4_0"                            optional: the GGUF type the rule came from (GGUF-derived
                                                 presets, `quantgate preset from-gguf`); shown by `plan`
A ``[provenance]`` table (GGUF file name, sha256, counts per type, mapping options) is kept as data.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from pathlib import Path

from . import formats
from .dtypes import FLOAT_DTYPES
from .errors import InputError, OptionError, ShapeError, UsageError, short
from quant.comfy.versions import COMFY_VERSIONS, comfy_has
from .resources import data_path

PRESET_DIR = data_path("presets")
TARGETS = formats.TARGETS


@dataclass(frozen=True)
class Rule:
    match: tuple[str, ...]
    action: str
    nvfp4: str | None = None
    ndim: int | None = None
    min_numel: int = 0
    reason: str = ""
    gguf: str = ""

    def override(self, kernel: str) -> str | None:
        """What "quant" means for this rule in a 4-bit format's file (None: the format's own kernel): the
        ``nvfp4`` key names the sensitive layers (fp8 or kept); each 4-bit format maps "fp8" to its 8-bit
        sibling (:attr:`quant.formats.Format.sensitive_actions`)."""
        return self.nvfp4

    def fits(self, name: str, shape: tuple) -> bool:
        if not any(fnmatch.fnmatchcase(name, g) for g in self.match):
            return False
        return self.ndim is None or len(shape) == self.ndim


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    family: str | None
    archs: tuple[str, ...]
    rules: tuple[Rule, ...]
    path: str = ""
    provenance: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Decision:
    name: str
    dtype: str
    shape: tuple[int, ...]
    action: str          # "keep" | "fp8" | "nvfp4"
    reason: str
    rule: int            # index of the deciding rule (-1: not eligible)
    gguf: str = ""       # GGML type this decision came from: the source's own (GGUF source) or the rule's

    @property
    def layer(self) -> str:
        return self.name[: -len(".weight")] if self.name.endswith(".weight") else self.name


@dataclass
class Plan:
    preset: Preset
    target: str
    decisions: list[Decision] = field(default_factory=list)

    def by_action(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for d in self.decisions:
            out[d.action] = out.get(d.action, 0) + 1
        return out

    def quantized(self) -> list[Decision]:
        return [d for d in self.decisions if d.action != "keep"]


def from_text(text: bytes | str, path) -> Preset:
    """The preset that ``text`` would be as the file ``path`` (a preset about to be written)."""
    return _load(Path(path), text)


def _load(path: Path, text: bytes | str | None = None) -> Preset:
    from .inputs import preset_toml          # the one validated loader of preset TOML (issue 20)
    data = preset_toml(path, text=text)
    rules = []
    for r in data.get("rule", []):
        m = r["match"]
        rules.append(Rule(tuple([m] if isinstance(m, str) else m), r["action"], r.get("nvfp4"), r.get("ndim"),
                          int(r.get("min_numel", 0)), r.get("reason", ""), str(r.get("gguf", ""))))
    return Preset(data.get("name") or path.stem, data.get("description", ""), data.get("family"),
                  tuple(data.get("archs", [])), tuple(rules), str(path), provenance=data.get("provenance", {}))


def available() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load(name_or_path: str) -> Preset:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return _load(p)
    f = PRESET_DIR / f"{name_or_path}.toml"
    if not f.exists():
        raise UsageError(f"unknown preset {name_or_path!r}; available: {', '.join(available())} (or a .toml path)")
    return _load(f)


def auto_preset(names, shapes: dict[str, tuple]) -> str:
    """Pick a preset from the model's keys (the same keys ComfyUI's detection reads)."""
    from .arch import detect
    fam = detect(names)
    if fam == "wan":
        head = shapes.get("head.head.weight", (0,))
        return "wan22-ti2v-5b" if head[0] == 192 else "wan22-a14b"
    if fam == "qwen_image":
        return "qwen-image-edit" if "__index_timestep_zero__" in shapes else "qwen-image"
    if fam in ("flux", "flux2"):
        return "flux"
    return "smart"


def _eligible(dtype: str, shape: tuple) -> bool:
    return dtype in FLOAT_DTYPES and len(shape) == 2


def legacy_needs_all_linear(target: str, comfy_version: str | None) -> bool:
    """ComfyUI <= 0.3.77 builds *every* Linear of a scaled_fp8 model with an fp8 weight and loads a
    high-precision weight into it by a plain (unscaled) cast; from 0.4.0 such layers stay high precision."""
    if not formats.get(target).legacy or not comfy_version:
        return False
    has = comfy_has("legacy_high_precision_linear", comfy_version)
    if has is None:
        raise OptionError(f"{{comfy_version}} {comfy_version!r} is not a version number (e.g. 0.3.75)")
    return not has


def _accepted(fmt, action: str, reason: str, shape: tuple) -> tuple[str, str]:
    """The action a layer of ``shape`` really gets: a format that cannot hold it (e.g. ConvRot needs K % 16 == 0)
    hands it to its fallback format, else it is kept in source precision, and the reason says why."""
    seen = set()
    while action != "keep" and action not in seen:
        seen.add(action)
        lf = fmt.for_action(action)
        why = lf.refuses(*shape)
        if why is None:
            return action, reason
        action = lf.fallback_action or "keep"
        reason = f"{lf.name} cannot hold it: {why}" + (f"; {action} instead" if action != "keep" else "; kept")
    return action, reason


def plan(preset: Preset, target: str, tensors: list[tuple[str, str, tuple]], *, source: str = "",
         comfy_version: str | None = None) -> Plan:
    """Decide every tensor; ``tensors`` = [(name, dtype, shape)] or [(name, dtype, shape, stored)] in
    source order (``stored``: the GGML type of a GGUF source's tensor, carried into the Decision).

    ``comfy_version``: the oldest ComfyUI the file must load correctly on. For fp8-legacy below
    0.4.0, Linear weights the preset keeps are quantized too (with their own scale), because that
    ComfyUI would cast them to fp8 without any scale."""
    fmt = formats.get(target)
    all_linear = legacy_needs_all_linear(target, comfy_version)
    out = Plan(preset, target)
    for name, dtype, shape, *rest in tensors:
        stored = rest[0] if rest else ""
        idx = next((i for i, r in enumerate(preset.rules) if r.fits(name, shape)), None)
        if idx is None:
            raise InputError(f"preset {preset.name!r} has no rule for tensor {short(name)} {dtype}{list(shape)} "
                             "(wrong preset for this model? try --preset smart)", source or None)
        r = preset.rules[idx]
        action, reason = r.action, r.reason
        if action == "quant":
            if not _eligible(dtype, shape):
                if dtype not in FLOAT_DTYPES:
                    raise ShapeError(f"tensor {short(name)} is {dtype}; only float (F16/BF16/F32) weights can be "
                                     f"quantized (already quantized input?)", source or None)
                raise ShapeError(f"tensor {short(name)} has shape {list(shape)}: {target} takes only 2-D Linear "
                                 f"weights (preset {preset.name!r} rule {idx + 1})", source or None)
            if math.prod(shape) < r.min_numel:
                action, reason = "keep", f"smaller than {r.min_numel} elements"
            else:
                over = r.override(fmt.kernel) if fmt.four_bit else None
                over = fmt.sensitive_actions.get(over, over)
                action = over or fmt.kernel
                if over:
                    reason = reason or f"sensitive layer: {over} under {fmt.kernel}"
                action, reason = _accepted(fmt, action, reason, shape)
        if all_linear and action == "keep" and name.endswith(".weight") and _eligible(dtype, shape):
            action = "fp8"
            reason = (f"ComfyUI {comfy_version} (< {COMFY_VERSIONS['legacy_high_precision_linear']}) loads every "
                      "Linear of a scaled_fp8 "
                      "file as fp8; scaled here instead of its unscaled cast")
        out.decisions.append(Decision(name, dtype, tuple(shape), action, reason, idx, r.gguf or stored))
    return out
