"""A GGUF file as a *model description*: per-tensor GGML type, logical shape and name, matched
against a safetensors source, and turned into a preset (the GGUF-derived preset).

Reading goes through :class:`quant.sources.GGUFSource` (gguf-py's ``GGUFReader``; its robustness
rules live there), so a file this module accepts is one ``convert`` can read too. What this adds:

* names normalised between GGUF and safetensors (``model.diffusion_model.`` / ``diffusion_model.``
  prefixes, ``model.`` / ``net.`` when on every key, as city96's ``convert.py`` strips them);
* Wan's 5-D ``patch_embedding.weight``: city96's ``convert.py`` keeps tensors with more than 4 dims
  aside and ``fix_5d_tensors.py`` re-inserts them as F32 (logical shape from the 5 stored dims, or
  ``comfy.gguf.orig_shape.<name>``); a GGUF without it is reported as "kept aside", not as a defect;
* a match report: tensors on one side only, shape mismatches;
* the GGUF -> preset mapping (the rule of jorismak/convert_nvfp4, made explicit and optional):
  F32/F16/BF16 stay in source precision, quantized types of <= ``nvfp4_max_bits`` bits become NVFP4,
  of <= ``fp8_max_bits`` become FP8, anything wider stays; ``keep_edge_blocks`` keeps the first and
  last N transformer blocks in source precision.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from quant.errors import InputError, OptionError

FLOAT_TYPES = ("F32", "F16", "BF16", "F64")

# Bits per weight of the integer part of each GGML type (what the preset mapping compares).
BITS: dict[str, int] = {
    "F64": 64, "F32": 32, "F16": 16, "BF16": 16,
    "Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q8_1": 8,
    "Q2_K": 2, "Q3_K": 3, "Q4_K": 4, "Q5_K": 5, "Q6_K": 6, "Q8_K": 8,
    "IQ1_S": 1, "IQ1_M": 1, "IQ2_XXS": 2, "IQ2_XS": 2, "IQ2_S": 2, "IQ3_XXS": 3, "IQ3_S": 3,
    "IQ4_NL": 4, "IQ4_XS": 4, "TQ1_0": 1, "TQ2_0": 2, "MXFP4": 4, "NVFP4": 4, "Q1_0": 1,
}

_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
_GLOBAL_PREFIXES = ("model.", "net.")
_BLOCK = re.compile(r"^(?P<group>(?:[a-z_]*_)?blocks|transformer_blocks|layers)\.(?P<idx>\d+)\.")


def normalise_names(names) -> dict[str, str]:
    """``{normalised key: original name}``. ``model.diffusion_model.`` / ``diffusion_model.`` are
    stripped per key; ``model.`` / ``net.`` only when every key carries it (city96's rule)."""
    names = list(names)
    out: dict[str, str] = {}
    strip_all = next((p for p in _GLOBAL_PREFIXES
                      if names and all(n.startswith(p) for n in names)
                      and not all(n.startswith(_PREFIXES[0]) for n in names)), None)
    for n in names:
        k = n
        for p in _PREFIXES:
            if k.startswith(p):
                k = k[len(p):]
                break
        else:
            if strip_all and k.startswith(strip_all):
                k = k[len(strip_all):]
        if k in out:
            raise InputError(f"tensors {out[k]!r} and {n!r} are the same tensor after removing the "
                             f"model prefix")
        out[k] = n
    return out


def bits_of(ggml_type: str) -> int | None:
    return BITS.get(ggml_type)


@dataclass(frozen=True)
class GGUFTensor:
    name: str                   # as stored in the GGUF
    key: str                    # normalised (safetensors source) name
    ggml_type: str              # e.g. "Q4_0", "Q5_K", "F16"
    shape: tuple[int, ...]      # logical PyTorch shape (GGUF stores the dims reversed)
    nbytes: int

    @property
    def quantized(self) -> bool:
        return self.ggml_type not in FLOAT_TYPES

    @property
    def bits(self) -> int | None:
        return bits_of(self.ggml_type)


@dataclass
class GGUFModel:
    path: Path
    arch: str | None
    file_type: str | None                     # LlamaFileType name, e.g. "MOSTLY_Q5_K_M"
    tensors: dict[str, GGUFTensor]            # normalised key -> tensor, file order

    def counts(self) -> dict[str, int]:
        c = Counter(t.ggml_type for t in self.tensors.values())
        return dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))

    def sha256(self) -> str:
        return sha256_file(self.path)


def sha256_file(path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _field_value(src, key: str):
    """A scalar or string KV of the GGUF the source has already parsed (None when absent/odd)."""
    r = getattr(src, "_r", None)
    f = None if r is None else r.fields.get(key)
    if f is None or not f.data:
        return None
    try:
        part = f.parts[f.data[0]]
        if getattr(f, "types", None) and f.types[0].name == "STRING":
            return bytes(part).decode("utf-8", "replace")
        return part[0].item()
    except Exception:       # a KV of an unexpected kind: treat as absent
        return None


def read(path) -> GGUFModel:
    """Read a GGUF's tensor table (headers only; no tensor data is decoded)."""
    from quant.sources import GGUFSource
    p = Path(path)
    if not p.is_file():
        raise InputError("no such file", p)
    with GGUFSource(p) as src:
        infos = [src.info(n) for n in src.keys()]
        arch = src.metadata.get("general.architecture") or _field_value(src, "general.architecture")
        ft = _field_value(src, "general.file_type")
    ft_name = None
    if isinstance(ft, int):
        try:
            from gguf import LlamaFileType
            ft_name = LlamaFileType(ft).name
        except (ValueError, ImportError):
            ft_name = str(ft)
    keys = normalise_names([i.name for i in infos])
    back = {v: k for k, v in keys.items()}
    tensors = {}
    for i in infos:
        k = back[i.name]
        tensors[k] = GGUFTensor(i.name, k, i.stored or i.dtype, tuple(i.shape), int(i.nbytes))
    return GGUFModel(p, arch if isinstance(arch, str) else None, ft_name, tensors)


# --- matching ----------------------------------------------------------------------------------

@dataclass
class Match:
    pairs: dict[str, str] = field(default_factory=dict)         # source name -> gguf key
    only_source: list[str] = field(default_factory=list)        # in the source, not in the GGUF
    aside: list[str] = field(default_factory=list)              # ... of which > 4-D (city96 keeps aside)
    only_gguf: list[str] = field(default_factory=list)          # in the GGUF, not in the source
    shape_mismatch: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (set(self.only_source) - set(self.aside)) and not self.only_gguf and not self.shape_mismatch

    def as_dict(self) -> dict:
        return {"matched": len(self.pairs), "only_source": self.only_source, "aside": self.aside,
                "only_gguf": self.only_gguf,
                "shape_mismatch": [{"name": n, "source": list(a), "gguf": list(b)} for n, a, b in self.shape_mismatch]}

    def lines(self) -> list[str]:
        out = [f"matched {len(self.pairs)} tensors"]
        if self.aside:
            out.append(f"{len(self.aside)} source tensors with > 4 dims are not in the GGUF (city96's tools keep "
                       f"them aside): {', '.join(self.aside)}")
        rest = [n for n in self.only_source if n not in self.aside]
        if rest:
            out.append(f"{len(rest)} source tensors are not in the GGUF: {', '.join(rest[:8])}"
                       + (" ..." if len(rest) > 8 else ""))
        if self.only_gguf:
            out.append(f"{len(self.only_gguf)} GGUF tensors are not in the source: {', '.join(self.only_gguf[:8])}"
                       + (" ..." if len(self.only_gguf) > 8 else ""))
        for n, a, b in self.shape_mismatch[:8]:
            out.append(f"shape differs: {n} source {list(a)} vs GGUF {list(b)}")
        return out


def match(model: GGUFModel, source_shapes: dict[str, tuple]) -> Match:
    """Pair the source's tensors with the GGUF's by normalised name."""
    m = Match()
    skeys = normalise_names(source_shapes)
    for k, sname in skeys.items():
        t = model.tensors.get(k)
        if t is None:
            m.only_source.append(sname)
            if len(source_shapes[sname]) > 4:
                m.aside.append(sname)
            continue
        if tuple(t.shape) != tuple(source_shapes[sname]):
            m.shape_mismatch.append((sname, tuple(source_shapes[sname]), tuple(t.shape)))
            continue
        m.pairs[sname] = k
    m.only_gguf = [t.name for k, t in model.tensors.items() if k not in skeys]
    return m


# --- GGUF -> preset ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Mapping:
    nvfp4_max_bits: int = 4
    fp8_max_bits: int = 8
    keep_edge_blocks: int = 0

    def check(self):
        if not (1 <= self.nvfp4_max_bits <= 16) or not (1 <= self.fp8_max_bits <= 16):
            raise OptionError("{nvfp4_max_bits} / {fp8_max_bits} must be between 1 and 16")
        if self.fp8_max_bits < self.nvfp4_max_bits:
            raise OptionError(f"{{fp8_max_bits}} ({self.fp8_max_bits}) is below {{nvfp4_max_bits}} "
                             f"({self.nvfp4_max_bits}); nothing could become FP8")
        if self.keep_edge_blocks < 0:
            raise OptionError("{keep_edge_blocks} must be >= 0")


def _edge_blocks(keys, n: int) -> set[str]:
    """Keys inside the first/last ``n`` blocks of each block group."""
    if n <= 0:
        return set()
    groups: dict[str, set[int]] = {}
    for k in keys:
        mt = _BLOCK.match(k)
        if mt:
            groups.setdefault(mt["group"], set()).add(int(mt["idx"]))
    edge = {g: set(sorted(ix)[:n]) | set(sorted(ix)[-n:]) for g, ix in groups.items()}
    out = set()
    for k in keys:
        mt = _BLOCK.match(k)
        if mt and int(mt["idx"]) in edge[mt["group"]]:
            out.add(k)
    return out


def decide(t: GGUFTensor, mapping: Mapping, edge: bool) -> tuple[str, str | None, str]:
    """(action, nvfp4 override, reason) of the preset rule for one GGUF tensor."""
    b = t.bits
    if b is None:
        raise InputError(f"tensor {t.name!r} has GGML type {t.ggml_type}, whose bit depth quantgate does not "
                         "know; cannot map it to a precision")
    if not t.quantized:
        return "keep", None, f"GGUF {t.ggml_type}: source precision"
    if len(t.shape) != 2:
        return "keep", None, f"GGUF {t.ggml_type} but {len(t.shape)}-D: source precision"
    if edge:
        return "keep", None, f"GGUF {t.ggml_type} in an edge block (--keep-edge-blocks {mapping.keep_edge_blocks})"
    if b <= mapping.nvfp4_max_bits:
        return "quant", None, f"GGUF {t.ggml_type} ({b}-bit <= {mapping.nvfp4_max_bits}): nvfp4"
    if b <= mapping.fp8_max_bits:
        return "quant", "fp8", f"GGUF {t.ggml_type} ({b}-bit <= {mapping.fp8_max_bits}): fp8 under nvfp4"
    return "keep", None, f"GGUF {t.ggml_type} ({b}-bit > {mapping.fp8_max_bits}): source precision"


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def derive_preset(model: GGUFModel, mapping: Mapping = Mapping(), *, name: str | None = None,
                  source_shapes: dict[str, tuple] | None = None, sha256: str | None = None):
    """A :class:`quant.presets.Preset` whose rules give every GGUF tensor the precision its GGML type
    maps to. With ``source_shapes`` the source's > 4-D tensors missing from the GGUF (kept aside by
    city96's tools) get a keep rule, and any other source tensor missing from the GGUF is an error."""
    from quant.presets import Preset, Rule
    mapping.check()
    aside: list[str] = []
    to_src = {}                       # normalised key -> the source's own name (rules match the source)
    if source_shapes is not None:
        to_src = normalise_names(source_shapes)
        m = match(model, source_shapes)
        if not m.clean:
            raise InputError("the GGUF does not describe this source: " + "; ".join(m.lines()[1:]), model.path)
        aside = [k for k, n in to_src.items() if n in m.aside]
    elif model.arch == "wan" and "patch_embedding.weight" not in model.tensors:
        aside = ["patch_embedding.weight"]
    edge = _edge_blocks(list(model.tensors), mapping.keep_edge_blocks)
    groups: dict[tuple, list[str]] = {}
    for k, t in model.tensors.items():
        action, nv, reason = decide(t, mapping, k in edge)
        groups.setdefault((action, nv, t.ggml_type, reason), []).append(k)
    rules = []
    for (action, nv, gt, reason), keys in groups.items():
        rules.append(Rule(tuple(_glob_escape(to_src.get(k, k)) for k in keys), action, nv, None, 0, reason, gguf=gt))
    if aside:
        rules.append(Rule(tuple(_glob_escape(to_src.get(k, k)) for k in aside), "keep", None, None, 0,
                          "> 4-D, kept aside by city96's GGUF tools: source precision", gguf="aside"))
    sha = sha256 or model.sha256()
    prov = {"gguf_file": model.path.name, "sha256": sha, "architecture": model.arch or "",
            "file_type": model.file_type or "", "tensors": len(model.tensors), "counts": model.counts(),
            "nvfp4_max_bits": mapping.nvfp4_max_bits, "fp8_max_bits": mapping.fp8_max_bits,
            "keep_edge_blocks": mapping.keep_edge_blocks}
    nm = name or f"gguf-{model.path.stem}"
    desc = (f"Derived from {model.path.name} (sha256 {sha[:12]}...): GGUF F32/F16/BF16 -> source precision, "
            f"quantized <= {mapping.nvfp4_max_bits} bits -> nvfp4, <= {mapping.fp8_max_bits} bits -> fp8"
            + (f", first/last {mapping.keep_edge_blocks} blocks kept" if mapping.keep_edge_blocks else "") + ".")
    return Preset(nm, desc, {"wan": "wan", "qwen_image": "qwen_image", "flux": "flux"}.get(model.arch or ""),
                  (), tuple(rules), "", provenance=prov)


def _toml_str(s: str) -> str:
    """A TOML basic string that tomllib reads back to ``s``: control characters (DEL included) escaped; a
    lone surrogate (a non-UTF-8 file name or --name, kept by Python as surrogateescape) cannot be in TOML, so
    such a name is written as its bytes, backslash-escaped (``caf\\xe9.gguf``). Issue 20: a DEL or a lone
    surrogate used to give an unreadable preset."""
    s = str(s)
    if any(0xD800 <= ord(c) <= 0xDFFF for c in s):
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") \
            if not any(0xD800 <= ord(c) <= 0xDC7F for c in s) else s.encode("utf-16", "surrogatepass").decode(
                "utf-16", "replace")
    return json.dumps(s, ensure_ascii=False).replace("\x7f", "\\u007f")


def preset_toml(preset) -> str:
    """The preset as TOML text that :func:`quant.presets.load` reads back to the same rules."""
    lines = [f"name = {_toml_str(preset.name)}", f"description = {_toml_str(preset.description)}"]
    if preset.family:
        lines.append(f"family = {_toml_str(preset.family)}")
    lines.append("")
    prov = dict(preset.provenance or {})
    counts = prov.pop("counts", {})
    if prov:
        lines.append("[provenance]")
        for k, v in prov.items():
            lines.append(f"{k} = {v if isinstance(v, int) and not isinstance(v, bool) else _toml_str(str(v))}")
        lines.append("")
        lines.append("[provenance.counts]")
        for k, v in counts.items():
            lines.append(f"{k} = {int(v)}")
        lines.append("")
    for r in preset.rules:
        lines.append("[[rule]]")
        if r.gguf:
            lines.append(f"gguf = {_toml_str(r.gguf)}")
        lines.append(f"action = {_toml_str(r.action)}")
        if r.nvfp4:
            lines.append(f"nvfp4 = {_toml_str(r.nvfp4)}")
        if r.ndim is not None:
            lines.append(f"ndim = {int(r.ndim)}")
        if r.min_numel:
            lines.append(f"min_numel = {int(r.min_numel)}")
        lines.append(f"reason = {_toml_str(r.reason)}")
        lines.append("match = [")
        lines += [f"  {_toml_str(m)}," for m in r.match]
        lines.append("]")
        lines.append("")
    return "\n".join(lines)
