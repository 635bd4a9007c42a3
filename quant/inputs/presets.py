"""Preset TOML (``presets/*.toml``, ``--preset FILE.toml``, ``preset from-gguf`` output) and the render
gate's policy TOML (``harness/policy.toml``, ``--policy``)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from . import bounded
from .schema import Name, NonNegInt, Open, PosInt, ShortText, Strict, Text, validate

MAX_BYTES = 16 << 20
MAX_RULES = 100_000
Glob = Annotated[str, Field(strict=True, min_length=1, max_length=8192)]


class Rule(Strict):
    match: Glob | list[Glob] = Field(max_length=1_000_000)
    action: Literal["keep", "quant"]
    nvfp4: Literal["fp8", "keep"] | None = None
    ndim: Annotated[int, Field(strict=True, ge=0, le=8)] | None = None
    min_numel: Annotated[int, Field(strict=True, ge=0, le=2**62)] = 0
    reason: Text = ""
    gguf: ShortText = ""

    @field_validator("match")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one glob")
        return v


class Preset(Strict):
    name: Name | None = None
    description: Text = ""
    family: ShortText | None = None
    archs: list[ShortText] = Field(default_factory=list, max_length=1000)
    rule: list[Rule] = Field(min_length=1, max_length=MAX_RULES)
    provenance: dict = Field(default_factory=dict)


def preset_toml(path, *, text: str | bytes | None = None) -> dict:
    """A preset file, validated: strict types (``ndim = "2"`` is an error, not a rule that never matches),
    known keys only, bounded sizes. ``text``: validate these bytes as if they were ``path``'s (a preset
    about to be written)."""
    raw = bounded.read_bytes(path, max_bytes=MAX_BYTES, what="preset") if text is None else text
    obj = bounded.parse_toml(raw, path, what="preset", max_bytes=MAX_BYTES)
    validate(Preset, obj, path, what="preset")
    return obj


# -- render-gate policy -----------------------------------------------------------------------------------
Ssim = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=-1.0, le=1.0)]
Seed = Annotated[int, Field(strict=True, ge=0, le=2**64 - 1)]
Side = Annotated[int, Field(strict=True, ge=16, le=16384, multiple_of=8)]


class _Plan(Open):
    seeds: list[Seed] = Field(min_length=1, max_length=1000)
    sizes: list[Annotated[list[Side], Field(min_length=2, max_length=2)]] = Field(min_length=1, max_length=100)
    steps: Annotated[int, Field(strict=True, ge=1, le=10_000)] = 6
    cfg: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=100.0)] = 1.0
    sampler: ShortText = "euler"
    scheduler: ShortText = "simple"
    cond_seed: Seed = 1
    neg_seed: Seed = 2
    control_seed_offset: Annotated[int, Field(strict=True, ge=1, le=2**32)] = 1000
    render_timeout_s: Annotated[float, Field(strict=True, allow_inf_nan=False, gt=0.0, le=7 * 86400)] = 300


class _Control(Open):
    max_ssim: Ssim
    min_margin: Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=2.0)] = 0.0


class _Repeat(Open):
    min_ssim: Ssim = 1.0


class _Load(Open):
    fail_on_missing: bool = True
    fail_on_unexpected: bool = True


Ratio = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=1.0, le=1000.0)]
Slack = Annotated[float, Field(strict=True, allow_inf_nan=False, ge=0.0, le=1.0)]


class _Margin(Strict):
    """Margins for a mean over ``renders`` renders (the gate uses the largest ``renders`` <= its own)."""
    renders: Annotated[int, Field(strict=True, ge=1, le=100_000)]
    ratio: Ratio
    slack: Slack


class _Reference(Open):
    """The render gate's reference-conversion margins (issue 21): fail when mean 1-SSIM > ratio x the
    reference's + slack; by the number of renders averaged (``margins``), else one ``ratio`` / ``slack``."""
    enabled: bool = True
    ratio: Ratio = 2.6
    slack: Slack = 0.002
    margins: list[_Margin] | None = Field(default=None, max_length=1000)


class Policy(Strict):
    plan: _Plan
    thresholds: dict[Name, Ssim] = Field(min_length=1, max_length=1000)
    control: _Control
    repeat: _Repeat | None = None
    load: _Load | None = None
    reference: _Reference | None = None


def policy_toml(path) -> dict:
    raw = bounded.read_bytes(path, max_bytes=1 << 20, what="policy")
    obj = bounded.parse_toml(raw, path, what="policy", max_bytes=1 << 20)
    validate(Policy, obj, path, what="policy")
    return obj


__all__ = ["preset_toml", "policy_toml", "Preset", "Policy", "NonNegInt", "PosInt"]
