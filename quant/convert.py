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
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, arch, formats, layout, presets
from . import rounding as _rounding
from .errors import InputError, UsageError, short
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
        ] + ([f"  rounding learned: {self.learned['layers']} layers ({self.learned['calibrated_layers']} on "
              f"recorded activations), output error vs RTN {self.learned['mean_gain_db']:+.2f} dB mean, "
              f"{self.learned['min_gain_db']:+.2f} dB worst layer (on the activations it was fitted to), "
              f"{self.learned['seconds']:.1f} s"] if self.learned else []))


def load_input_scales(path) -> dict[str, float]:
    """JSON ``{"layers": {layer: activation_amax}}`` (or a flat map) of calibrated activation amax."""
    from .sources import load_json
    obj = load_json(path, "input scales file")      # bounded numbers and nesting, no NaN, one-line errors
    layers = obj.get("layers", obj) if isinstance(obj, dict) else None
    if not isinstance(layers, dict):
        raise InputError('expected {"layers": {"<layer>": <activation amax>, ...}}', path)
    out = {}
    for k, v in layers.items():
        if type(v) not in (int, float) or not (0 < float(v) < float("inf")):
            raise InputError(f"layer {short(k)}: activation amax must be a positive number, got "
                             f"{short(v, 40) if isinstance(v, str) else str(v)[:40]}", path)
        out[k] = float(v)
    return out


def make_plan(src, preset_name, target: str, comfy_version: str | None = None):
    """``preset_name``: a preset name, a .toml path, a :class:`presets.Preset` (e.g. GGUF-derived) or
    None (detected from the keys). A GGUF source's GGML types reach the decisions."""
    tensors = [(n, src.info(n).dtype, src.info(n).shape, src.info(n).stored) for n in src.keys()]
    if preset_name is None:
        preset_name = presets.auto_preset([t[0] for t in tensors], {t[0]: t[2] for t in tensors})
    preset = preset_name if isinstance(preset_name, presets.Preset) else presets.load(preset_name)
    return presets.plan(preset, target, tensors, source=str(src.path), comfy_version=comfy_version)


def convert(source, output=None, target: str = "fp8", preset=None, *, device: str = "cpu",
            force: bool = False, progress: bool = False, input_scales: str | dict | None = None,
            comfy_version: str | None = None, backend: str | None = None, rounding: str | None = None,
            preset_from_gguf=None, gguf_mapping=None, pipelined: bool | None = None, calibration=None,
            seed: int = 0, learned_iters: int | None = None, gpus: int = 1, calib_rows: int = 4096,
            activation_stats=None, percentile: float | None = None, margin: float = 1.0,
            keep_fpmm: bool = False, allow_foreign_calibration: bool = False) -> Summary:
    """``backend``: kernel backend name (quant.kernels; default: the best available on ``device``);
    ``rounding``: rounding strategy name (quant.rounding; default round-to-nearest).
    ``pipelined``: with round-to-nearest on a safetensors source, reads, quantization and writes
    overlap (quant.pipeline: read-ahead, CUDA streams or CPU workers, a writer thread); False (or
    another rounding strategy, or a GGUF source) runs the one-layer-at-a-time loop. Same bytes.
    Default (None): on, unless QUANTGATE_PIPELINE=0.
    ``preset_from_gguf``: derive the preset from this GGUF (its GGML type per tensor, mapped by
    ``gguf_mapping``, a :class:`quant.gguf.model.Mapping`) instead of ``preset``.
    Learned rounding (``rounding="learned"``): ``calibration`` (a '<layer>.input' activations file; else
    the data-free proxy), ``seed`` (calibration-row sample), ``learned_iters`` (default 200 on CUDA, 50 on
    CPU), ``gpus`` (worker processes, one per device), ``calib_rows`` (rows kept per layer).
    ``activation_stats``: a calibration JSON (``quantgate calibrate``) or a loaded
    :class:`quant.activations.statistics.Calibration`; every quantized layer gets input_scale = its amax (or
    ``percentile`` of |x|) x ``margin`` / the layer format's full scale. ``keep_fpmm``: fp8 layers keep
    full_precision_matrix_mult even with an input_scale (the scale is stored, unused).
    A calibration recorded on another model (its provenance sha256 is not the source file's) is refused
    (InputError naming both) unless ``allow_foreign_calibration``."""
    fmt = formats.get(target)
    learned = rounding == "learned"
    if not learned and (calibration or gpus != 1 or learned_iters is not None):
        raise UsageError("--calibration, --gpus and --iters are options of --rounding learned")
    if gpus < 1 or calib_rows < 1 or (learned_iters is not None and learned_iters < 0):
        raise UsageError("--gpus and --calib-rows must be at least 1, --iters at least 0")
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but no CUDA device is available")
        if gpus > torch.cuda.device_count():
            raise UsageError(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA devices are visible")
    if activation_stats is not None and input_scales is not None:
        raise UsageError("use either --calibration or --input-scales, not both")
    if not (margin > 0 and margin != float("inf")):
        raise UsageError(f"--margin must be a positive number, got {margin}")
    if (percentile is not None or margin != 1.0) and activation_stats is None:
        raise UsageError("--percentile and --margin go with --calibration")
    if keep_fpmm and activation_stats is None and input_scales is None:
        raise UsageError("--keep-full-precision-mm goes with --calibration (or --input-scales)")
    if activation_stats is not None and not hasattr(activation_stats, "activation_amax"):
        from quant.activations import statistics as _cal
        activation_stats = _cal.load(activation_stats)
    foreign_cal = None
    if activation_stats is not None:
        from quant.activations import statistics as _cal
        foreign_cal = _cal.check_model(activation_stats, source, allow_foreign=allow_foreign_calibration)

    def weight_only(lf):                 # keep_fpmm: fp8 layers stay weight-only despite their input_scale
        return True if keep_fpmm and lf.kernel == "fp8" and not lf.legacy else None
    source = Path(source)
    out = Path(output) if output else default_output(source, target)
    t0 = time.perf_counter()
    with open_source(source) as src:
        check_output(out, [source, *src.files, preset_from_gguf, calibration,
                           activation_stats.path if activation_stats is not None else None,
                           input_scales if isinstance(input_scales, (str, Path)) else None], overwrite=force)
        if preset_from_gguf is not None:
            from quant.gguf import model as gguf_model
            if preset is not None:
                raise UsageError("--preset and --preset-from-gguf exclude each other")
            preset = gguf_model.derive_preset(gguf_model.read(preset_from_gguf), gguf_mapping or gguf_model.Mapping(),
                                              source_shapes={n: src.info(n).shape for n in src.keys()})
        the_plan = make_plan(src, preset, target, comfy_version)
        if activation_stats is not None:
            amax = activation_stats.activation_amax([d.layer for d in the_plan.quantized()], percentile, margin)
        else:
            amax = input_scales if isinstance(input_scales, dict) else (load_input_scales(input_scales) if input_scales else {})
        unknown = set(amax) - {d.layer for d in the_plan.quantized()}
        if unknown:
            raise InputError(f"input scales given for {len(unknown)} layers that are not quantized "
                             f"(first: {sorted(unknown)[0]!r})", input_scales if isinstance(input_scales, str) else None)
        entries, configs = [], {}
        for d in the_plan.decisions:
            if d.action == "keep":
                entries.append((d.name, d.dtype, d.shape))
                continue
            has_in = d.layer in amax
            lf = fmt.for_action(d.action)
            entries += lf.layer_entries(d.layer, d.shape[0], d.shape[1], input_scale=has_in, weight_only=weight_only(lf))
            conf = lf.layer_config(has_in, weight_only(lf))
            if conf is not None:
                configs[d.layer] = conf
        marker = layout.marker_entry(target)
        if marker is not None:
            entries.append(marker)
        extra = {"quantgate.version": __version__, "quantgate.format": target, "quantgate.preset": the_plan.preset.name}
        mt = arch.model_type({n: src.info(n).shape for n in src.keys()})
        if mt and "model_type" not in src.metadata:
            extra["model_type"] = mt
        if comfy_version:
            extra["quantgate.comfy_version"] = comfy_version
        prov = the_plan.preset.provenance or {}
        if prov.get("sha256"):
            extra["quantgate.preset_gguf"] = str(prov.get("gguf_file", ""))
            extra["quantgate.preset_gguf_sha256"] = str(prov["sha256"])
        if activation_stats is not None:
            prov = activation_stats.data.get("provenance", {})
            extra["quantgate.calibration"] = json.dumps({
                "statistic": "amax" if percentile is None else f"p{percentile:g}", "margin": margin,
                "model_sha256": (prov.get("model") or {}).get("sha256"), "seeds": prov.get("seeds"),
                **({"foreign_to_source_sha256": foreign_cal[1]} if foreign_cal else {})})
        meta = layout.header_metadata(target, configs, src.metadata, extra)
        summary = Summary(str(source), str(out), target, the_plan.preset.name, the_plan.by_action(),
                          tensors_in=len(src), tensors_out=len(entries), bytes_in=src.total_bytes)
        bar = None
        if progress and not learned:      # learned rounding shows its own bar (layers, loss, ETA)
            from tqdm import tqdm
            bar = tqdm(total=src.total_bytes, unit="B", unit_scale=True, unit_divisor=1024,
                       desc=f"convert -> {target}", dynamic_ncols=True, leave=False)
        from . import pipeline                     # imports torch: only when converting
        if pipelined is None:
            pipelined = os.environ.get("QUANTGATE_PIPELINE", "1") != "0"
        use_pipeline = (pipelined and pipeline.supports(src) and not keep_fpmm    # keep_fpmm: LayerJob.weight_only
                        and (rounding or _rounding.DEFAULT) == _rounding.DEFAULT)
        results = None
        strategy = rounding
        if learned:
            strategy = _learned_strategy(the_plan, source, out, device, progress, calibration, seed,
                                         learned_iters, gpus, calib_rows)
        if not use_pipeline:
            jobs = (LayerJob(d.layer, d.name, fmt.for_action(d.action), functools.partial(src.get, d.name),
                             amax.get(d.layer), tuple(d.shape), weight_only(fmt.for_action(d.action)))
                    for d in the_plan.quantized())
            results = quantize_layers(jobs, device=device, backend=backend, rounding=strategy)
        try:
            with AtomicWriter(out, entries, meta, writeback_every=256 << 20) as w:
                if use_pipeline:
                    done = [0]

                    def step(nbytes):
                        done[0] += 1
                        if bar is not None:
                            bar.update(nbytes)
                            bar.set_postfix_str(f"{done[0]}/{len(the_plan.decisions)} tensors", refresh=False)

                    pipeline.run(src, the_plan.decisions, fmt, w, device=device, backend=backend, amax=amax,
                                 progress=step)
                else:
                    _serial(src, the_plan, w, results, bar)
                if marker is not None:
                    w.write(marker[0], fmt.marker_tensor())
        finally:
            if results is not None:
                results.close()
            if bar is not None:
                bar.close()
    summary.bytes_out = out.stat().st_size
    summary.seconds = time.perf_counter() - t0
    if learned:
        summary.rounding, summary.learned = "learned", strategy.stats.as_dict()
    return summary



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


def _learned_strategy(the_plan, source, out, device, progress, calibration, seed, iters, gpus, calib_rows):
    """A configured learned-rounding strategy (quant/rounding) for this conversion; checks its inputs."""
    from .rounding import Learned
    from quant.activations.samples import Calibration
    from .rounding.learned import LearnedConfig
    if iters is None:      # CUDA: 200 steps; CPU: 50 (most of the gain, see README "Learned rounding")
        iters = 200 if str(device).startswith("cuda") else 50
    cfg = LearnedConfig(seed=seed, samples=calib_rows, iters=int(iters))
    q = the_plan.quantized()
    for d in q:
        if len(d.shape) != 2:
            raise InputError(f"learned rounding needs 2-D weights; {d.name!r} has shape {list(d.shape)}", source)
    if calibration:
        c = Calibration(calibration, cfg.samples, cfg.seed)
        try:
            unknown = c.layers - {d.layer for d in q}
        finally:
            c.close()
        if unknown:
            raise InputError(f"activations given for {len(unknown)} layers that are not quantized "
                             f"(first: {sorted(unknown)[0]!r})", calibration)
    return Learned(cfg, calibration, gpus=gpus, source=source, output=out, progress=progress)

