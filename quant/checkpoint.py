"""What a checkpoint declares: its layers, their companion tensors, their quantization carriers and
each layer's format object (quant.formats).

Read from headers plus the tiny ``.comfy_quant`` tensors only, so building it costs milliseconds
even for a 28 GB file. The format gate's rules, the render gate's twin, ``inspect`` and ``diff`` all
read this one view, so they never disagree about a file.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

from . import formats
from .formats import BY_COMFY_FORMAT, QUANT_METADATA_KEY, Format

_LEGACY = formats.marker_format()                        # the format a marker tensor declares
MARKER = _LEGACY.marker["key"]                           # "scaled_fp8"
# every per-layer key suffix any format uses (from the registry, plus the legacy names)
LAYER_SUFFIXES = formats.layer_suffixes()
SCALE_SUFFIXES = tuple(s for s in LAYER_SUFFIXES if s not in ("weight", "bias", "comfy_quant"))
LEGACY_SUFFIXES = _LEGACY.scale_keys
IGNORED_KEYS = ("__index_timestep_zero__",)               # markers other loaders read; data irrelevant
QUANT_STORAGE = ("F8_E4M3", "F8_E5M2", "U8", "I8")
_BLOCK_IDX = re.compile(r"\.\d+(?=\.|$)")


def pattern(name: str) -> str:
    """blocks.17.ffn.0 -> blocks.N.ffn.0 (for grouping)."""
    return _BLOCK_IDX.sub(".N", name)


def split_key(key: str) -> tuple[str, str] | None:
    if "." not in key:
        return None
    layer, suffix = key.rsplit(".", 1)
    return (layer, suffix) if suffix in LAYER_SUFFIXES else None


@dataclass
class Layer:
    name: str
    keys: dict[str, str] = field(default_factory=dict)        # suffix -> tensor key
    header_conf: object = None                                # dict from _quantization_metadata (or bad value)
    tensor_conf: object = None                                # dict from <layer>.comfy_quant (or bad value)
    legacy: bool = False                                      # declared by scaled_fp8 marker + scale_weight
    marker_prefix: str | None = None
    conf: dict | None = None                                  # effective config (header wins, as in ComfyUI)
    spec: Format | None = None                                # the layer's format object
    logical_shape: tuple[int, ...] | None = None              # [N, K] from source/template, if known

    @property
    def declared(self) -> bool:
        return self.conf is not None

    @property
    def comfy_format(self) -> str | None:
        return self.conf.get("format") if isinstance(self.conf, dict) else None

    @property
    def fpmm(self) -> bool:
        return bool(isinstance(self.conf, dict) and self.conf.get("full_precision_matrix_mult"))

    @property
    def decode_scale_key(self) -> str | None:
        """Suffix of the per-tensor decode scale (None: no known format)."""
        return self.spec.decode_scale_key if self.spec else None

    @property
    def input_scale_key(self) -> str:
        return self.spec.input_scale_key if self.spec else ("scale_input" if self.legacy else "input_scale")


@dataclass
class Marker:
    key: str
    prefix: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class Structure:
    src: object                                   # quant.sources.Source
    infos: dict                                   # name -> SourceTensor (dtype, shape)
    metadata: dict[str, str]
    layers: dict[str, Layer]
    markers: list[Marker]
    header_raw: str | None                        # the _quantization_metadata string, if any
    header_layers: dict | None                    # its parsed "layers" (None when absent/invalid)
    header_problem: str | None                    # why the header carrier is unusable
    tensor_problems: dict[str, str]               # layer -> why its comfy_quant tensor is unusable
    family: str | None = None

    @property
    def declared(self) -> list[Layer]:
        return [la for la in self.layers.values() if la.declared]

    def companion_keys(self) -> set[str]:
        """Keys that belong to a declared layer's quantized representation (weight + companions)."""
        out = set()
        for la in self.declared:
            for suf, k in la.keys.items():
                if suf != "bias":
                    out.add(k)
        return out


def _parse_comfy_quant(src, key, info) -> tuple[dict | None, str | None]:
    if info.dtype != "U8" or len(info.shape) != 1:
        return None, f"{key} is {info.dtype}{list(info.shape)}, but must be a 1-D U8 tensor of JSON bytes"
    if info.shape[0] > 1 << 16:
        return None, f"{key} holds {info.shape[0]} bytes, far too many for a layer config"
    raw = src.raw(key)                      # a pread; no torch (header-only verify stays light)
    try:
        conf = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None, f"{key} does not hold valid UTF-8 JSON (ComfyUI fails with a JSONDecodeError)"
    if not isinstance(conf, dict):
        return None, f"{key} holds JSON {type(conf).__name__}, not an object"
    if not isinstance(conf.get("format"), str):
        if formats.dialect_for(conf) is not None:      # e.g. comfy-quants' INT8-Fast marker: read, named by verify
            return conf, None
        return None, f"{key} has no 'format' (ComfyUI: 'Unknown quantization format for layer')"
    return conf, None


def _parse_header(raw: str) -> tuple[dict | None, str | None, dict[str, str]]:
    """-> (layers, problem, per-layer problems)."""
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None, "header _quantization_metadata is not valid JSON (ComfyUI fails to load the file)", {}
    if isinstance(obj, str):
        return None, "header _quantization_metadata is a JSON string inside a string (JSON-encoded twice)", {}
    if not isinstance(obj, dict) or not isinstance(obj.get("layers"), dict):
        return None, "header _quantization_metadata has no 'layers' object (ComfyUI: KeyError 'layers')", {}
    layers, bad = {}, {}
    for name, conf in obj["layers"].items():
        if isinstance(conf, str):
            bad[name] = ("its _quantization_metadata entry is a string, not a JSON object "
                         "(layer configs JSON-encoded twice?); ComfyUI cannot read it")
        elif not isinstance(conf, dict):
            bad[name] = f"its _quantization_metadata entry is a {type(conf).__name__}, not a JSON object"
        elif not isinstance(conf.get("format"), str) and formats.dialect_for(conf) is None:
            bad[name] = "its _quantization_metadata entry has no 'format' (ComfyUI: 'Unknown quantization format')"
        else:
            layers[name] = conf
    return layers, None, bad


def build(src) -> Structure:
    infos = {k: src.info(k) for k in src.keys()}
    meta = dict(src.metadata)
    layers: dict[str, Layer] = {}

    def layer(name):
        la = layers.get(name)
        if la is None:
            la = layers[name] = Layer(name)
        return la

    markers = []
    for k, info in infos.items():
        if k == MARKER or k.endswith("." + MARKER):
            markers.append(Marker(k, k[: -len(MARKER)], info.dtype, tuple(info.shape)))
            continue
        sk = split_key(k)
        if sk:
            layer(sk[0]).keys[sk[1]] = k

    header_raw = meta.get(QUANT_METADATA_KEY)
    header_layers, header_problem, header_bad = (None, None, {})
    if header_raw is not None:
        header_layers, header_problem, header_bad = _parse_header(header_raw)
    tensor_problems: dict[str, str] = {}
    for name, problem in header_bad.items():
        tensor_problems[name] = problem
        layer(name).header_conf = "invalid"

    for name, conf in (header_layers or {}).items():
        layer(name).header_conf = conf
    for la in list(layers.values()):
        k = la.keys.get("comfy_quant")
        if k is not None:
            conf, problem = _parse_comfy_quant(src, k, infos[k])
            if problem:
                tensor_problems.setdefault(la.name, problem)
                la.tensor_conf = "invalid"
            else:
                la.tensor_conf = conf

    marker_by_prefix = {m.prefix: m for m in markers}
    for la in layers.values():
        hc = la.header_conf if isinstance(la.header_conf, dict) else None
        tc = la.tensor_conf if isinstance(la.tensor_conf, dict) else None
        if hc is not None or tc is not None:
            la.conf = hc if hc is not None else tc
        elif la.header_conf == "invalid" or la.tensor_conf == "invalid":
            la.conf = {"format": None}
        elif "scale_weight" in la.keys:
            m = next((m for p, m in marker_by_prefix.items() if la.name.startswith(p)), None)
            if m is not None:
                la.legacy = True
                la.marker_prefix = m.prefix
                la.conf = {"format": "float8_e4m3fn"}
                if m.numel == 2:
                    la.conf["full_precision_matrix_mult"] = True
        if la.legacy:
            la.spec = _LEGACY
        elif la.comfy_format or formats.dialect_for(la.conf) is not None:
            la.spec = formats.for_conf(la.conf)

    from . import arch
    st = Structure(src, infos, meta, layers, markers, header_raw, header_layers, header_problem,
                   tensor_problems, family=arch.detect(infos))
    return st


def reference_shapes(st: Structure, source=None) -> tuple[dict[str, tuple], str | None]:
    """Logical tensor shapes to hold the file against: the source's (if given), else the matching
    architecture template's (name -> shape). Returns (shapes, what they came from)."""
    if source is not None:
        return {k: tuple(source.info(k).shape) for k in source.keys()}, "source"
    from . import arch
    if st.family is None:
        return {}, None
    companions = st.companion_keys()
    plain = {k: tuple(i.shape) for k, i in st.infos.items() if k not in companions}
    for a in arch.ALL.values():
        if a.family != st.family:
            continue
        tpl = dict(a.tensors())
        names = set(plain) | {la.name + ".weight" for la in st.declared}
        if set(tpl) != names - {m.key for m in st.markers} - set(IGNORED_KEYS):
            continue
        if all(tpl.get(k) == s for k, s in plain.items() if k in tpl):
            return tpl, f"architecture template {a.name}"
    return {}, None


def load_layer(st: Structure, la: Layer):
    """(stored weight, per-tensor decode scale as float32 0-d, block scales viewed as e4m3 or None)."""
    import torch
    w = st.src.get(la.keys["weight"])
    scale = st.src.get(la.keys[la.decode_scale_key]).float().reshape(())
    bs = None
    bk = la.spec.block_scale_key
    if bk is not None:
        bs = st.src.get(la.keys[bk])
        if bs.dtype == torch.uint8:
            bs = bs.view(torch.float8_e4m3fn)
    return w, scale, bs
