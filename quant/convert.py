"""Conversion: source -> plan (preset) -> quantize (quant.quantize: a rounding strategy on a kernel
backend) -> layer tensors (the format objects) -> atomic file.

The output header is computed from the plan before any data is read; the quantized layers stream in
plan order into a temp file that is fsynced and renamed only when everything was written. With the
default round-to-nearest strategy on a safetensors source, :mod:`quant.pipeline` overlaps reading,
quantizing (GPU streams or CPU workers) and writing within bounded host memory (2 x the largest
tensor); otherwise :func:`quant.quantize.quantize_layers` runs one layer at a time.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, arch, formats, layout, presets
from . import rounding as _rounding
from .device import Device
from .errors import InputError, OptionError, short
from .outputs import check_output
from .quantize import LayerJob, quantize_layers
from .safetensors_io import AtomicWriter
from .sources import open_source


def default_output(src: Path, target: str) -> Path:
    """Beside the source: ``<stem>`` of a file, or the shard directory's name (dir or its index.json),
    without a trailing precision tag, plus the format's usual suffix."""
    if src.is_dir() or src.name.endswith(".json"):
        d = src if src.is_dir() else src.parent
        parent, base = d.parent, d.name
    else:
        parent, base = src.parent, src.stem
    base = re.sub(r"[_-](bf16|fp16|fp32|f16|f32|float16|float32|bfloat16)$", "", base, flags=re.I)
    return parent / f"{base}{formats.get(target).file_suffix}.safetensors"


@dataclass
class Summary:
    source: str
    output: str
    target: str
    preset: str
    layers: dict[str, int] = field(default_factory=dict)     # action -> count
    tensors_in: int = 0
    tensors_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    seconds: float = 0.0
    rounding: str = "rtn"
    learned: dict | None = None      # learned rounding: layers, calibrated layers, dB gains over RTN, seconds
    budget: dict | None = None       # --budget-bits: the allocation (bits a weight, counts, each layer's reason)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["mb_per_s"] = round(self.mb_per_s, 1)
        return d

    def table(self) -> str:
        q = ", ".join(f"{v} {k}" for k, v in sorted(self.layers.items()))
        return "\n".join([
            f"  source   {self.source}",
            f"  output   {self.output}",
            f"  format   {self.target} (preset {self.preset})",
            f"  layers   {q}",
            f"  tensors  {self.tensors_in} in -> {self.tensors_out} out",
            f"  size     {self.bytes_in / 1e6:,.1f} MB -> {self.bytes_out / 1e6:,.1f} MB "
            f"({(self.bytes_out / self.bytes_in if self.bytes_in else 0):.2f}x)",
            f"  time     {self.seconds:.2f} s, {self.mb_per_s:,.1f} MB/s of input",
        ] + ([f"  rounding {self.rounding}"] if self.rounding != "rtn" and not self.learned else [])
          + ([f"  budget   {self.budget['bits_per_weight']:.3f} bits a weight of the quantized layers "
              f"(--budget-bits {self.budget['budget_bits']:g}, {self.budget['metric']} error): "
              + ", ".join(f"{v} {k}" for k, v in sorted(self.budget['counts'].items()))] if self.budget else [])
          + ([f"  rounding learned: {self.learned['layers']} layers ({self.learned['calibrated_layers']} on "
              f"recorded activations), output error vs RTN {self.learned['mean_gain_db']:+.2f} dB mean, "
              f"{self.learned['min_gain_db']:+.2f} dB worst layer (on the activations it was fitted to), "
              f"{self.learned['seconds']:.1f} s"] if self.learned else []))


def load_input_scales(path) -> dict[str, float]:
    """JSON ``{"layers": {layer: activation_amax}}`` (or a flat map) of calibrated activation amax."""
    from .inputs import input_scales_json         # the one validated loader (issue 20)
    return input_scales_json(path)


def make_plan(src, preset_name, target: str, comfy_version: str | None = None):
    """``preset_name``: a preset name, a .toml path, a :class:`presets.Preset` (e.g. GGUF-derived) or
    None (detected from the keys). A GGUF source's GGML types reach the decisions."""
    tensors = [(n, src.info(n).dtype, src.info(n).shape, src.info(n).stored) for n in src.keys()]
    if preset_name is None:
        preset_name = presets.auto_preset([t[0] for t in tensors], {t[0]: t[2] for t in tensors})
    preset = preset_name if isinstance(preset_name, presets.Preset) else presets.load(preset_name)
    return presets.plan(preset, target, tensors, source=str(src.path), comfy_version=comfy_version)


@dataclass(frozen=True)
class PlanChoice:
    """How the plan is made: a preset (name, .toml path, :class:`presets.Preset`, or None: detected from
    the keys), or one derived from a GGUF's per-tensor types (``from_gguf`` + ``gguf_mapping``)."""
    preset: object = None
    from_gguf: Path | None = None
    gguf_mapping: object = None
    comfy_version: str | None = None
    budget_bits: float | str | None = None   # --budget-bits B | "preset" (the preset's own bits a weight)


@dataclass(frozen=True)
class RoundingChoice:
    """The rounding strategy (quant.rounding: "rtn", the default, "learned" or "gptq") and its inputs:
    activation ``samples`` (a '<layer>.input' file, :mod:`quant.activations.samples`; learned and gptq need
    them: the data-free proxy of learned rounding loses to RTN on held-out activations and runs only with
    ``data_free=True``), the row-sample ``seed``, ``iters`` (learned; default 200 on CUDA, 50 on CPU),
    ``gpus`` (learned's worker processes), ``rows`` kept per layer, ``scale_search`` (NVFP4 block scales
    chosen by "mse" = block weight error or "output" = block output error on the samples; rtn and gptq),
    ``damp`` (gptq: H + damp * mean(diag H) * I)."""
    strategy: str | None = None
    samples: Path | None = None
    seed: int = 0
    iters: int | None = None
    gpus: int = 1
    rows: int = 4096
    scale_search: str | None = None
    damp: float | None = None
    data_free: bool = False

    @property
    def learned(self) -> bool:
        return self.strategy == "learned"

    @property
    def gptq(self) -> bool:
        return self.strategy == "gptq"

    def check(self) -> None:
        if not self.learned and (self.gpus != 1 or self.iters is not None or self.data_free):
            raise OptionError("{gpus} and {iters} are options of {rounding} learned")
        if self.samples and not (self.learned or self.gptq or self.scale_search == "output"):
            raise OptionError("{act_samples} goes with {rounding} learned, {rounding} gptq or {scale_search} output")
        if self.gpus < 1 or self.rows < 1 or (self.iters is not None and self.iters < 0):
            raise OptionError("{gpus} and {sample_rows} must be at least 1, {iters} at least 0")
        if (self.learned and not self.data_free or self.gptq) and not self.samples:
            raise OptionError(f"{{rounding}} {self.strategy} needs {{act_samples}}: recorded input rows, one "
                              "'<layer>.input' tensor [rows, in_features] per quantized Linear "
                              "(quant.activations.samples.save_samples writes them; see README 'Learned rounding')")
        if self.scale_search not in (None, "mse", "output"):
            raise OptionError(f"{{scale_search}} is mse or output, not {self.scale_search!r}")
        if self.scale_search and self.learned:
            raise OptionError("{scale_search} goes with {rounding} rtn or gptq (learned keeps RTN's scales)")
        if self.scale_search == "output" and not self.samples:
            raise OptionError("{scale_search} output needs {act_samples}")
        if self.damp is not None and not (self.gptq and 0 <= self.damp < float("inf")):
            raise OptionError("{damp} is a number >= 0 and an option of {rounding} gptq")


@dataclass(frozen=True)
class ActivationChoice:
    """Where input scales come from: activation ``statistics`` (:mod:`quant.activations.statistics`, a
    path or loaded) -> input_scale = its amax (or ``percentile`` of |x|) x ``margin`` / the layer format's
    full scale; or given ``input_scales`` (a {layer: amax} dict or JSON path). ``keep_fpmm``: fp8 layers
    keep full_precision_matrix_mult even with an input_scale (stored, unused)."""
    statistics: object = None
    percentile: float | None = None
    margin: float = 1.0
    input_scales: object = None
    keep_fpmm: bool = False
    allow_foreign: bool = False     # statistics recorded on another model (refused by default: issue 21)


@dataclass(frozen=True)
class OutputChoice:
    """``path`` (None: beside the source, :func:`default_output`), ``force`` (overwrite), ``progress``
    (a progress bar)."""
    path: Path | None = None
    force: bool = False
    progress: bool = False


@dataclass(frozen=True)
class ConvertRequest:
    """Everything one conversion needs, checked once (:meth:`check`): a source, a :class:`Format`, a
    :class:`Device`, the plan, the rounding, the activations and the output policy. ``backend``: kernel
    backend name (quant.kernels; default the best available on the device). ``pipelined``: overlap
    reads, quantization and writes (quant.pipeline) with round-to-nearest on a safetensors source; None:
    on unless QUANTGATE_PIPELINE=0. Same bytes either way."""
    source: Path
    format: formats.Format
    device: Device = Device()
    plan: PlanChoice = PlanChoice()
    rounding: RoundingChoice = RoundingChoice()
    activations: ActivationChoice = ActivationChoice()
    output: OutputChoice = OutputChoice()
    backend: str | None = None
    pipelined: bool | None = None

    def check(self) -> None:
        """Options that do not go together: :class:`OptionError` (named by field, so the CLI can word it
        with its flags); a device that is not there: :class:`DeviceError`."""
        r, a, fmt = self.rounding, self.activations, self.format
        if not fmt.target:
            raise OptionError(f"{fmt.name} is a format quantgate reads and checks, not one it writes; "
                              f"choose one of {', '.join(formats.TARGETS)}")
        if (r.learned or r.gptq) and not fmt.learned_rounding:
            able = ", ".join(f.name for f in formats.FORMATS.values() if f.learned_rounding)
            raise OptionError(f"{{rounding}} {r.strategy} is not available for {fmt.name}: its rounding is fixed by "
                              f"the format ({r.strategy} rounding supports {able}); use the default round-to-nearest")
        if r.scale_search and fmt.kernel not in _searched_kernels():
            raise OptionError(f"{{scale_search}} chooses NVFP4 block scales; {fmt.name} has none to search")
        if (a.statistics is not None or a.input_scales is not None) and not fmt.static_input_scale:
            raise OptionError(f"{fmt.name} stores no input_scale: ComfyUI quantizes its activations at run time "
                              f"({fmt.activation}); {{act_stats}} / {{input_scales}} do not apply")
        r.check()
        self.device.check(workers=r.gpus)
        b = self.plan.budget_bits
        if b is not None and b != "preset" and not (isinstance(b, (int, float)) and 0 < b < float("inf")):
            raise OptionError(f"{{budget_bits}} must be a positive number of bits per weight or 'preset', got {b}")
        if a.statistics is not None and a.input_scales is not None:
            raise OptionError("use either {act_stats} or {input_scales}, not both")
        if not (a.margin > 0 and a.margin != float("inf")):
            raise OptionError(f"{{margin}} must be a positive number, got {a.margin}")
        if (a.percentile is not None or a.margin != 1.0) and a.statistics is None:
            raise OptionError("{percentile} and {margin} go with {act_stats}")
        if a.keep_fpmm and a.statistics is None and a.input_scales is None:
            raise OptionError("{keep_fpmm} goes with {act_stats} (or {input_scales})")
        if self.plan.from_gguf is not None and self.plan.preset is not None:
            raise OptionError("{preset} and {preset_from_gguf} exclude each other")

    @property
    def out(self) -> Path:
        return Path(self.output.path) if self.output.path else default_output(self.source, self.format.name)


# convert()'s keyword options -> (part of the request, field): the short way to build a request.
_OPTIONS = {
    "device": (None, "device"), "backend": (None, "backend"), "pipelined": (None, "pipelined"),
    "comfy_version": ("plan", "comfy_version"), "preset_from_gguf": ("plan", "from_gguf"),
    "gguf_mapping": ("plan", "gguf_mapping"),
    "rounding": ("rounding", "strategy"), "act_samples": ("rounding", "samples"), "seed": ("rounding", "seed"),
    "learned_iters": ("rounding", "iters"), "gpus": ("rounding", "gpus"), "sample_rows": ("rounding", "rows"),
    "scale_search": ("rounding", "scale_search"), "damp": ("rounding", "damp"),
    "learned_data_free": ("rounding", "data_free"), "budget_bits": ("plan", "budget_bits"),
    "act_stats": ("activations", "statistics"), "percentile": ("activations", "percentile"),
    "margin": ("activations", "margin"), "input_scales": ("activations", "input_scales"),
    "keep_fpmm": ("activations", "keep_fpmm"),
    "allow_foreign_calibration": ("activations", "allow_foreign"),
    "force": ("output", "force"), "progress": ("output", "progress"),
}


def request(source, output=None, target: str = "fp8", preset=None, **options) -> ConvertRequest:
    """A :class:`ConvertRequest` from :func:`convert`'s arguments (keyword names: ``_OPTIONS``)."""
    parts: dict[str, dict] = {"plan": {"preset": preset}, "output": {"path": output}}
    top: dict = {}
    for k, v in options.items():
        if k not in _OPTIONS:
            raise TypeError(f"convert() got an unexpected keyword argument {k!r}")
        part, fld = _OPTIONS[k]
        (top if part is None else parts.setdefault(part, {}))[fld] = v
    if "device" in top:
        top["device"] = Device.of(top["device"])
    return ConvertRequest(Path(source), formats.get(target), plan=PlanChoice(**parts["plan"]),
                          rounding=RoundingChoice(**parts.get("rounding", {})),
                          activations=ActivationChoice(**parts.get("activations", {})),
                          output=OutputChoice(**parts["output"]), **top)


def convert(source, output=None, target: str = "fp8", preset=None, **options) -> Summary:
    """Convert ``source`` into a ``target``-format file (see :class:`ConvertRequest`; options by keyword:
    device, backend, pipelined, comfy_version, preset_from_gguf, gguf_mapping, rounding, act_samples,
    seed, learned_iters, gpus, sample_rows, scale_search, damp, learned_data_free, budget_bits, act_stats,
    percentile, margin, input_scales, keep_fpmm, force, progress)."""
    return run(request(source, output, target, preset, **options))


def run(req: ConvertRequest) -> Summary:
    """Check the request, plan, write the header from the plan, stream the quantized layers into a temp
    file, rename it when complete."""
    req.check()
    stats = _statistics(req.activations.statistics)
    foreign = _foreign(req, stats)
    out = req.out
    t0 = time.perf_counter()
    from . import startup
    startup.mark("convert_start")
    with open_source(req.source) as src:
        a = req.activations
        check_output(out, [req.source, *src.files, req.plan.from_gguf, req.rounding.samples,
                           stats.path if stats is not None else None,
                           a.input_scales if isinstance(a.input_scales, (str, Path)) else None],
                     overwrite=req.output.force)
        the_plan = _plan(req, src)
        amax = _input_amax(req, stats, the_plan)
        entries, meta, marker = _header(req, src, the_plan, amax, stats, foreign)
        summary = Summary(str(req.source), str(out), req.format.name, the_plan.preset.name, the_plan.by_action(),
                          tensors_in=len(src), tensors_out=len(entries), bytes_in=src.total_bytes)
        strategy = _write(req, src, the_plan, amax, out, entries, meta, marker)
    summary.bytes_out = out.stat().st_size
    summary.seconds = time.perf_counter() - t0
    startup.end()
    startup.mark("convert_end")
    if req.rounding.learned:
        summary.rounding, summary.learned = "learned", strategy.stats.as_dict()
    elif req.rounding.gptq or req.rounding.scale_search:
        summary.rounding = _rounding_label(req.rounding)
    if getattr(the_plan, "budget", None) is not None:
        summary.budget = the_plan.budget.as_dict()
    return summary


def _searched_kernels() -> frozenset:
    from .rounding.strategy import SEARCHED
    return SEARCHED


def _rounding_label(r: RoundingChoice) -> str:
    name = r.strategy or _rounding.DEFAULT
    return name + (f" + {r.scale_search} scale search" if r.scale_search else "")


def _statistics(stats):
    """Loaded activation statistics (a path is read here), or None."""
    if stats is None or hasattr(stats, "activation_amax"):
        return stats
    from quant.activations import statistics as _stats
    return _stats.load(stats)


def _foreign(req: ConvertRequest, stats) -> tuple[str, str] | None:
    """Activation statistics recorded on another model than the source (its provenance sha256 is not the
    source file's) are refused (InputError naming both) unless ``activations.allow_foreign``; then the pair
    (calibration's, source's sha256) is returned and recorded in the file's metadata."""
    if stats is None:
        return None
    from quant.activations import statistics as _stats
    return _stats.check_model(stats, req.source, allow_foreign=req.activations.allow_foreign)


def _weight_only(req: ConvertRequest, lf) -> bool | None:
    """keep_fpmm: layers of a format that is weight-only unless given an input_scale (comfy_quant fp8)
    stay weight-only despite their input_scale."""
    return True if req.activations.keep_fpmm and lf.weight_only_without_input_scale else None


def _plan(req: ConvertRequest, src):
    preset = req.plan.preset
    if req.plan.from_gguf is not None:
        from quant.gguf import model as gguf_model
        preset = gguf_model.derive_preset(gguf_model.read(req.plan.from_gguf),
                                          req.plan.gguf_mapping or gguf_model.Mapping(),
                                          source_shapes={n: src.info(n).shape for n in src.keys()})
    the_plan = make_plan(src, preset, req.format.name, req.plan.comfy_version)
    if req.plan.budget_bits is not None:
        from . import budget
        budget.apply(the_plan, src, req)
    return the_plan


def _input_amax(req: ConvertRequest, stats, the_plan) -> dict[str, float]:
    """{layer: activation amax} of the layers that get an input_scale."""
    a = req.activations
    quantized = {d.layer for d in the_plan.quantized()}
    if stats is not None:
        amax = stats.activation_amax([d.layer for d in the_plan.quantized()], a.percentile, a.margin)
    elif isinstance(a.input_scales, dict):
        amax = a.input_scales
    else:
        amax = load_input_scales(a.input_scales) if a.input_scales else {}
    unknown = set(amax) - quantized
    amax_file = (stats.path if stats is not None
                 else a.input_scales if isinstance(a.input_scales, (str, Path)) else None)
    if unknown:
        raise InputError(f"input scales given for {len(unknown)} layers that are not quantized "
                         f"(first: {sorted(unknown)[0]!r})", amax_file)
    for d in the_plan.quantized():            # never a zero, subnormal or non-finite input_scale (issue 20)
        if d.layer in amax:
            v = float(req.format.for_action(d.action).activation_scale(amax[d.layer]).reshape(-1)[0])
            if not scale_ok(v):
                raise InputError(f"layer {short(d.layer)}: activation amax {amax[d.layer]:g} gives input_scale "
                                 f"{v!r} in F32 ({_why(v)}); no usable scale", amax_file)
    return amax


def _header(req: ConvertRequest, src, the_plan, amax, stats, foreign=None):
    """(tensor entries in file order, header metadata, marker entry or None): all from the plan, before
    any data is read."""
    fmt = req.format
    entries, configs = [], {}
    for d in the_plan.decisions:
        if d.action == "keep":
            entries.append((d.name, d.dtype, d.shape))
            continue
        has_in = d.layer in amax
        lf = fmt.for_action(d.action)
        entries += lf.layer_entries(d.layer, d.shape[0], d.shape[1], input_scale=has_in,
                                    weight_only=_weight_only(req, lf))
        conf = lf.layer_config(has_in, _weight_only(req, lf), tuple(d.shape))
        if conf is not None:
            configs[d.layer] = conf
    marker = layout.marker_entry(fmt.name)
    if marker is not None:
        entries.append(marker)
    meta = layout.header_metadata(fmt.name, configs, src.metadata, _provenance(req, src, the_plan, stats, foreign))
    return entries, meta, marker


def _provenance(req: ConvertRequest, src, the_plan, stats, foreign=None) -> dict[str, str]:
    """quantgate's own header metadata: version, format, preset (and the GGUF it came from), model type,
    target ComfyUI, activation statistics used."""
    extra = {"quantgate.version": __version__, "quantgate.format": req.format.name,
             "quantgate.preset": the_plan.preset.name}
    mt = arch.model_type({n: src.info(n).shape for n in src.keys()})
    if mt and "model_type" not in src.metadata:
        extra["model_type"] = mt
    if req.plan.comfy_version:
        extra["quantgate.comfy_version"] = req.plan.comfy_version
    prov = the_plan.preset.provenance or {}
    if prov.get("sha256"):
        extra["quantgate.preset_gguf"] = str(prov.get("gguf_file", ""))
        extra["quantgate.preset_gguf_sha256"] = str(prov["sha256"])
    if stats is not None:
        a = req.activations
        prov = stats.data.get("provenance", {})
        extra["quantgate.calibration"] = json.dumps({
            "statistic": "amax" if a.percentile is None else f"p{a.percentile:g}", "margin": a.margin,
            "model_sha256": (prov.get("model") or {}).get("sha256"), "seeds": prov.get("seeds"),
            **({"foreign_to_source_sha256": foreign[1]} if foreign else {})})
    return extra


def _uses_pipeline(req: ConvertRequest, src) -> bool:
    from . import pipeline                     # imports torch: only when converting
    pipelined = req.pipelined
    if pipelined is None:
        pipelined = os.environ.get("QUANTGATE_PIPELINE", "1") != "0"
    return (pipelined and pipeline.supports(src) and not req.activations.keep_fpmm    # keep_fpmm: LayerJob.weight_only
            and (req.rounding.strategy or _rounding.DEFAULT) == _rounding.DEFAULT and not req.rounding.scale_search)


def _write(req: ConvertRequest, src, the_plan, amax, out, entries, meta, marker):
    """Quantize and write every tensor in plan order into ``out`` (atomically). Returns the rounding
    strategy used (learned rounding's carries its statistics)."""
    fmt, device = req.format, str(req.device)
    bar = None
    if req.output.progress and not req.rounding.learned:   # learned rounding shows its own bar (layers, loss, ETA)
        from tqdm import tqdm
        bar = tqdm(total=src.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=f"convert -> {fmt.name}", dynamic_ncols=True, leave=False)
    use_pipeline = _uses_pipeline(req, src)
    results = None
    strategy = req.rounding.strategy
    if req.rounding.learned:
        strategy = _learned_strategy(req, the_plan, out)
    elif req.rounding.gptq or req.rounding.scale_search:
        strategy = _searched_strategy(req, the_plan)
    if not use_pipeline:
        jobs = (LayerJob(d.layer, d.name, fmt.for_action(d.action), functools.partial(src.get, d.name),
                         amax.get(d.layer), tuple(d.shape), _weight_only(req, fmt.for_action(d.action)))
                for d in the_plan.quantized())
        results = quantize_layers(jobs, device=device, backend=req.backend, rounding=strategy)
    try:
        with AtomicWriter(out, entries, meta, writeback_every=256 << 20) as w0:
            w = ScaleGuard(w0, str(req.source))
            if use_pipeline:
                _pipelined(req, src, the_plan, amax, w, bar)
            else:
                _serial(src, the_plan, w, results, bar)
            if marker is not None:
                w.write(marker[0], fmt.marker_tensor())
    finally:
        if results is not None:
            results.close()
        if bar is not None:
            bar.close()
    return strategy


def _pipelined(req: ConvertRequest, src, the_plan, amax, w, bar) -> None:
    from . import pipeline
    done = [0]

    def step(nbytes):
        done[0] += 1
        if bar is not None:
            bar.update(nbytes)
            bar.set_postfix_str(f"{done[0]}/{len(the_plan.decisions)} tensors", refresh=False)

    pipeline.run(src, the_plan.decisions, req.format, w, device=str(req.device), backend=req.backend, amax=amax,
                 progress=step)


F32_TINY = 1.1754943508222875e-38          # the smallest normal float32
SCALE_SUFFIXES = (".input_scale", ".weight_scale", ".weight_scale_2", ".scale_weight", ".scale_input")


def scale_ok(v: float) -> bool:
    return math.isfinite(v) and v >= F32_TINY


def _why(v: float) -> str:
    return "not finite" if not math.isfinite(v) else "zero" if v == 0 else "negative" if v < 0 else \
        "subnormal: underflowed"


class ScaleGuard:
    """The converter's writer, checked (issue 20): a per-tensor scale (``input_scale``, ``weight_scale``,
    ``weight_scale_2``, legacy ``scale_weight``/``scale_input``; one element) that is zero, subnormal or not
    finite is never written -- one line naming the source and the tensor, exit 2, and the atomic writer
    leaves nothing behind. Block scales (many elements) may be zero for all-zero blocks."""

    def __init__(self, writer, source: str):
        self.writer, self.source = writer, source

    def write(self, name: str, t) -> None:
        if name.endswith(SCALE_SUFFIXES) and t.numel() == 1 and t.is_floating_point():
            v = float(t.reshape(-1)[0].float())
            if not scale_ok(v):
                raise InputError(f"tensor {short(name)} would be {v!r} ({_why(v)}): the weights it scales are "
                                 "all zero, huge or not finite; no usable scale", self.source)
        self.writer.write(name, t)

    def __getattr__(self, k):
        return getattr(self.writer, k)


def _serial(src, the_plan, w, results, bar) -> None:
    """One layer at a time, in plan order, from quantize_layers' results."""
    for i, d in enumerate(the_plan.decisions):
        if d.action == "keep":
            t = src.get(d.name)
            w.write(d.name, t)
            del t
        else:
            try:
                r = next(results)
            except InputError as e:       # name the file, not only the tensor
                if e.path not in (None, d.name):    # names its own file (calibration, a worker)
                    raise
                raise InputError(f"tensor {d.name!r}: {e.problem}", src.info(d.name).file) from None
            assert r.job.name == d.name, (r.job.name, d.name)   # strategies keep job order
            for k, v in r.tensors.items():
                w.write(k, v)
            del r
        if bar is not None:
            bar.update(src.info(d.name).nbytes)
            bar.set_postfix_str(f"{i + 1}/{len(the_plan.decisions)} tensors", refresh=False)


def _searched_strategy(req: ConvertRequest, the_plan):
    """GPTQ (``--rounding gptq``) or round-to-nearest with searched NVFP4 scales (``--scale-search``)."""
    from .rounding.strategy import Gptq, SearchedRtn
    r = req.rounding
    _check_samples(req, the_plan, r.rows, r.seed)
    if r.gptq:
        from .rounding.gptq import GptqConfig
        cfg = GptqConfig(damp=GptqConfig.damp if r.damp is None else r.damp, scale_search=r.scale_search,
                         samples=r.rows, seed=r.seed)
        return Gptq(cfg, r.samples, progress=req.output.progress)
    return SearchedRtn(r.scale_search, r.samples, r.rows, r.seed)


def _check_samples(req: ConvertRequest, the_plan, rows: int, seed: int) -> None:
    """2-D weights only; activation samples only for layers of this model (samples of layers the plan keeps are
    ignored: one recording, e.g. `calibrate --act-samples` of every Linear, serves any preset or budget)."""
    from quant.activations.samples import ActivationSamples
    q = the_plan.quantized()
    for d in q:
        if len(d.shape) != 2:
            raise InputError(f"{req.rounding.strategy} rounding needs 2-D weights; {d.name!r} has shape "
                             f"{list(d.shape)}", req.source)
    if req.rounding.samples:
        c = ActivationSamples(req.rounding.samples, rows, seed)
        try:
            unknown = c.layers - {d.layer for d in the_plan.decisions}
        finally:
            c.close()
        if unknown:
            raise InputError(f"activations given for {len(unknown)} layers this model does not have "
                             f"(first: {sorted(unknown)[0]!r})", req.rounding.samples)


def _learned_strategy(req: ConvertRequest, the_plan, out):
    """A configured learned-rounding strategy (quant/rounding) for this conversion; checks its inputs."""
    from .rounding import Learned
    from .rounding.learned import LearnedConfig
    r = req.rounding
    iters = r.iters
    if iters is None:      # CUDA: 200 steps; CPU: 50 (most of the gain, see README "Learned rounding")
        iters = 200 if req.device.is_cuda else 50
    cfg = LearnedConfig(seed=r.seed, samples=r.rows, iters=int(iters))
    _check_samples(req, the_plan, cfg.samples, cfg.seed)
    return Learned(cfg, r.samples, gpus=r.gpus, source=req.source, output=out, progress=req.output.progress)
