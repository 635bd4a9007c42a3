"""The format object: traits (one table per format), the layer's tensors, quantize beside dequantize.

A format is a small class deriving from :class:`Format`; defining it registers one instance (the
``__init_subclass__`` hook, gguf-py's model). Everything that differs between formats is a trait or a
method here, so writer, checker, twin and docs never test which format they hold.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

from quant.comfy.versions import COMFY_QUANT_SUFFIX, comfy_quant_bytes, comfy_quant_config, comfy_quant_tensor

CARRIER_MARKER = "scaled_fp8_marker"      # legacy: a scaled_fp8 marker tensor declares the file
CARRIER_COMFY_QUANT = "comfy_quant"       # per-layer .comfy_quant tensor + header _quantization_metadata

# shape rule name -> (shape of the tensor for a logical Linear weight [n, k], doc). Formats add theirs.
SHAPES: dict[str, tuple[Callable[[int, int], tuple[int, ...]], str]] = {
    "NK": (lambda n, k: (n, k), "[N, K] (unchanged)"),
    "scalar": (lambda n, k: (), "[] (0-d scalar)"),
    "one": (lambda n, k: (1,), "[1]"),
}


def shape_rule(name: str, fn: Callable[[int, int], tuple[int, ...]], doc: str) -> None:
    SHAPES[name] = (fn, doc)


def resolve_shape(rule: str, n: int, k: int) -> tuple[int, ...]:
    return tuple(SHAPES[rule][0](n, k))


class _ShapeDoc(dict):
    def __missing__(self, key):
        return SHAPES[key][1]

    def __contains__(self, key):
        return key in SHAPES


SHAPE_RULE_DOC = _ShapeDoc()


@dataclass(frozen=True)
class Companion:
    """One tensor ``<layer>.<suffix>`` of a quantized layer."""
    suffix: str
    dtypes: tuple[str, ...]          # first = what the writer emits; all = what the checker accepts
    shape: str                       # shape rule name (see SHAPES)
    required: bool
    meaning: str
    alt_shapes: tuple[str, ...] = ()  # other shapes ComfyUI accepts (checker: accept, info)
    positive_finite: bool = False     # value(s) must be finite and > 0
    # other dtypes ComfyUI converts on load (checker: warning, not error): per-tensor float scales are
    # cast to float32 (legacy scale_weight param copy; kitchen Params for weight_scale/_2)
    tolerated_dtypes: tuple[str, ...] = ()
    missing: str = "required by the format"   # what ComfyUI does when a required companion is absent

    def fit(self, t):
        """``t`` reshaped to this companion's written shape where that is a scalar rule."""
        if self.shape == "one":
            return t.reshape(1)
        if self.shape == "scalar":
            return t.reshape(())
        return t


_REGISTRY: dict[str, "Format"] = {}


class Format:
    """Base of every format. Subclasses set the traits below and implement quantize/dequantize."""

    # ---- traits ---------------------------------------------------------------------------------
    name: ClassVar[str]                      # CLI name (--format)
    comfy_format: ClassVar[str | None]       # "format" in comfy_quant / _quantization_metadata
    carrier: ClassVar[str]                   # CARRIER_MARKER | CARRIER_COMFY_QUANT
    kernel: ClassVar[str]                    # the kernel family (= the preset's action): "fp8" | "nvfp4"
    companions: ClassVar[tuple[Companion, ...]]
    per_layer_keys: ClassVar[tuple[str, ...]] = ()   # every suffix a layer of this format may have
    marker: ClassVar[dict] = {}              # the file-level marker tensor (legacy carrier)
    min_comfy: ClassVar[str]                 # oldest ComfyUI that loads a file of this format correctly
    loads_since: ClassVar[str]               # oldest ComfyUI that reads the format at all (the render gate
                                             # renders a dequantized twin on older servers)
    description: ClassVar[str]
    file_suffix: ClassVar[str]               # default output name: <source stem><file_suffix>.safetensors
    full_scale: ClassVar[float]              # amax / full_scale = the per-tensor decode (and input) scale
    decode_scale_key: ClassVar[str]          # the per-tensor decode multiplier's suffix
    input_scale_key: ClassVar[str]           # the static activation scale's suffix
    block_scale_key: ClassVar[str | None] = None     # per-block scales' suffix, if the format has them
    legacy_names: ClassVar[dict[str, str]] = {}      # our suffix -> the comfy_quant name of the same tensor
    # full_precision_matrix_mult when no calibrated input_scale is given (weight-only; ComfyUI >= 0.4 would
    # otherwise cast activations to the weight format at scale 1.0)
    weight_only_without_input_scale: ClassVar[bool] = False
    # without an input_scale ComfyUI scales activations per call (amax / full scale) instead of by 1.0
    dynamic_without_input_scale: ClassVar[bool] = False
    max_rel_error: ClassVar[float] = 0.0     # numeric check: relative Frobenius error bound
    min_cosine: ClassVar[float] = 0.0
    target: ClassVar[bool] = True            # an output format of `quantgate convert`
    runtime_note: ClassVar[str] = ""         # what verify notes about running it (hardware support)
    doc_written: ClassVar[str] = ""          # README/`formats --markdown`: what a file holds (markdown)
    doc_comfy: ClassVar[str] = ""            # README/`formats --markdown`: which ComfyUI loads it (markdown)
    order: ClassVar[int] = 100               # position in FORMATS / --format choices
    # activations: "static" = a calibrated input_scale may be stored (fp8, nvfp4); anything else is a sentence
    # saying what ComfyUI does with activations at run time (the render gate's report quotes it)
    activation: ClassVar[str] = "static"
    activation_short: ClassVar[str] = "dynamic per-row"   # the render report's few words for a dynamic activation path
    four_bit: ClassVar[bool] = False         # the preset's sensitive-layer rules (nvfp4 = "fp8"|"keep") apply
    sensitive_actions: ClassVar[dict] = {}   # preset sensitive-layer value -> action in this format's files
    fallback_action: ClassVar[str | None] = None     # action for a layer this format refuses (None: keep it)
    native_sm: ClassVar[tuple[int, int] | None] = None   # lowest CUDA SM ComfyUI runs it natively on (None: never)
    learned_rounding: ClassVar[bool] = False  # `--rounding learned` can optimise its rounding (quant.rounding)
    loader: ClassVar[str | None] = None      # a custom node the file needs instead of stock ComfyUI (dialects)

    def __init_subclass__(cls, register: bool = True, **kw):
        super().__init_subclass__(**kw)
        if register:
            if cls.name in _REGISTRY:
                raise ValueError(f"format {cls.name!r} registered twice")
            _REGISTRY[cls.name] = cls()

    # ---- derived facts --------------------------------------------------------------------------
    @property
    def legacy(self) -> bool:
        """Declared by a file-level marker instead of per-layer comfy_quant configs."""
        return self.carrier == CARRIER_MARKER

    @property
    def changes_weight_shape(self) -> bool:
        """The stored weight is not the logical [N, K] (packed codes)."""
        return self.companion("weight").shape != "NK"

    @property
    def scale_keys(self) -> tuple[str, ...]:
        return tuple(c.suffix for c in self.companions if c.suffix != "weight")

    def companion(self, suffix: str) -> Companion | None:
        return next((c for c in self.companions if c.suffix == suffix), None)

    def for_action(self, action: str) -> "Format":
        """The format of a layer the preset decided ``action`` (a kernel family) for, in a file of this
        format: itself for its own kernel, else the same-carrier format of that kernel (nvfp4 files hold
        fp8 layers as ``fp8``)."""
        if action == self.kernel:
            return self
        for f in sorted(_REGISTRY.values(), key=lambda f: f.order):     # = FORMATS' order
            if f.kernel == action and f.carrier == self.carrier:
                return f
        raise ValueError(f"{self.name} files cannot hold {action} layers")

    def stored_nk(self, weight_shape: tuple[int, ...]) -> tuple[int, int]:
        """The logical [N, K] a stored 2-D weight implies (padded dims when the weight is packed)."""
        return tuple(weight_shape)

    def refuses(self, n: int, k: int) -> str | None:
        """Why a Linear [n, k] cannot be written in this format (None: it can). The plan keeps such a layer
        in source precision, or gives it to :attr:`fallback_action`."""
        return None

    def matches_conf(self, conf: dict) -> bool:
        """Whether a layer's comfy_quant dict (whose "format" is this format's) is this format (formats that
        share one ComfyUI format string, e.g. int8_tensorwise with and without ConvRot, tell them apart)."""
        return True

    def emulation(self, conf: dict) -> dict | None:
        """How the render gate's activation emulation quantizes this layer's input the way ComfyUI's native kernel
        does: {"format": <kernel family the emulation node knows>, ...parameters}, or None (weight-only)."""
        return {"format": self.kernel}

    def conf_problems(self, conf: dict, n: int, k: int) -> list[str]:
        """What is wrong with a layer's comfy_quant parameters for a [n, k] weight (verify's layout rules)."""
        return []

    def conf_extra(self, n: int, k: int) -> dict:
        """Keys this format adds to a layer's comfy_quant dict beside "format" (shape dependent)."""
        return {}

    def raw_nk(self, raw: dict) -> tuple[int, int]:
        """The logical [N, K] of :meth:`quantize`'s output (for the layer's comfy_quant dict)."""
        return self.stored_nk(tuple(raw["weight"].shape))

    @property
    def static_input_scale(self) -> bool:
        """A calibrated input_scale can be stored and is used by ComfyUI."""
        return self.activation == "static"

    def block_scales_fit(self, weight_shape: tuple, scales_shape: tuple) -> bool:
        """Whether stored block scales can cover the stored weight (formats without them: True)."""
        return True

    # ---- what a layer becomes ------------------------------------------------------------------
    def entries(self, layer: str, n: int, k: int, *, with_input_scale: bool = False) -> list[tuple[str, str, tuple]]:
        """(key, dtype, shape) of every tensor the writer emits for a quantized Linear [n, k]
        (bias and comfy_quant excluded: they depend on the source and the JSON text)."""
        out = []
        for c in self.companions:
            if c.required or (c.suffix == self.input_scale_key and with_input_scale):
                out.append((f"{layer}.{c.suffix}", c.dtypes[0], resolve_shape(c.shape, n, k)))
        return out

    def layer_config(self, has_input_scale: bool, weight_only: bool | None = None,
                     shape: tuple[int, int] | None = None) -> dict | None:
        """The layer's comfy_quant JSON dict, or None when the carrier is a file marker. ``weight_only``:
        force full_precision_matrix_mult on (True) or off (False); None = the format's default. ``shape``:
        the logical [N, K] (formats whose dict depends on it, e.g. the ConvRot group size, need it)."""
        if self.legacy:
            return None
        if weight_only is None:
            weight_only = self.weight_only_without_input_scale and not has_input_scale
        conf = comfy_quant_config(self, full_precision_mm=bool(weight_only))
        if shape is not None:
            conf.update(self.conf_extra(*shape))
        return conf

    def layer_entries(self, layer: str, n: int, k: int, *, input_scale: bool = False,
                      weight_only: bool | None = None) -> list[tuple[str, str, tuple]]:
        ents = self.entries(layer, n, k, with_input_scale=input_scale)
        conf = self.layer_config(input_scale, weight_only, (n, k))
        if conf is not None:
            ents.append((f"{layer}.{COMFY_QUANT_SUFFIX}", "U8", (len(comfy_quant_bytes(conf)),)))
        return ents

    def activation_scale(self, amax: float):
        """The static activation scale for a calibrated activation amax: amax / full_scale."""
        import torch
        v = torch.tensor(float(amax) / self.full_scale, dtype=torch.float32)
        return self.companion(self.input_scale_key).fit(v)

    def layer_tensors(self, layer: str, raw: dict, *, input_amax: float | None = None,
                      weight_only: bool | None = None) -> dict:
        """The layer's ComfyUI tensors (CPU, companion order) from :meth:`quantize`'s output."""
        out = {}
        for c in self.companions:
            if c.suffix in raw:
                out[f"{layer}.{c.suffix}"] = c.fit(raw[c.suffix].cpu())
            elif c.suffix == self.input_scale_key and input_amax is not None:
                out[f"{layer}.{c.suffix}"] = self.activation_scale(input_amax)
        conf = self.layer_config(input_amax is not None, weight_only, self.raw_nk(raw))
        if conf is not None:
            out[f"{layer}.{COMFY_QUANT_SUFFIX}"] = comfy_quant_tensor(conf)
        return out

    def marker_tensor(self):
        """The file-level marker tensor (zeros of the marker's dtype and shape)."""
        import torch
        from ..safetensors_io import TORCH_DTYPES
        return torch.zeros(self.marker["shape"], dtype=TORCH_DTYPES[self.marker["dtype"]])

    # ---- numbers (implemented per format, through a kernel backend) ------------------------------
    def quantize(self, w, *, backend=None, name: str | None = None) -> dict:
        """Quantize a 2-D weight -> {suffix: tensor} (on the weight's device, raw shapes)."""
        raise NotImplementedError

    def quantize_async(self, tq, x):
        """The pipelined CUDA path's no-sync kernels (``tq``: the kernel seam, quant.kernels.Kernels: its
        ``*_async`` ops): ({suffix: device tensor}, amax for the deferred finiteness check), or None where the
        format has none (then :meth:`quantize` runs on the kernel stream)."""
        return None

    def dequantize(self, tensors: dict, shape: tuple[int, int] | None = None, dtype=None, *, backend=None):
        """Inverse of :meth:`quantize` from {suffix: tensor}; ``shape`` = the logical [N, K].
        (quantgate's own decode: the checker proves files through comfy-kitchen instead.)"""
        raise NotImplementedError

    # ---- deliberate damage (planted defects: verify must catch a destroyed file of every format) -------
    def negated_weight(self, w):
        """The stored weight whose decoded values are (about) the negatives of ``w``'s, in this encoding."""
        import torch
        if w.dtype == torch.int8:
            return (-w.to(torch.int16)).clamp(-128, 127).to(torch.int8)
        return (-w.float()).to(w.dtype)

    def scaled_up(self, scale):
        """A decode scale that makes every value about 10x larger (float scales x10; others unchanged)."""
        import torch
        return scale * 10 if scale.dtype in (torch.float32, torch.float16, torch.bfloat16) else scale

    def __repr__(self):
        return f"<format {self.name}>"
