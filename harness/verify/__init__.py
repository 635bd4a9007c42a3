"""The format gate: ``verify(checkpoint, source=None, reference=None, strict=False)``.

Modules: ``quant.checkpoint`` (what the file declares), ``layout_rules`` (carriers, companions, dtypes, shapes,
layer kinds, activation policy, minimum ComfyUI), ``value_rules`` (scale values), ``numeric``
(comfy-kitchen dequantization vs the source: ``kitchen``, ``metrics``, ``diagnosis``, ``pool``), ``stats``
(no-source plausibility), ``findings`` (grouping), ``record``
(gate record JSON). Exit codes: 0 passes, 1 defects, 2 unreadable input.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from quant.checkpoint import build, reference_shapes
from quant.device import Device
from quant.sources import open_source

from . import layout_rules, log_scales, non_transformer, value_rules
from .findings import ERROR, INFO, WARNING, Findings

MODES = ("header-only", "statistics", "numeric")
MODE_TEXT = {
    "header-only": "header only (no tensor data read)",
    "statistics": "statistics only (no --source: nibble order, block-scale layout and values not proven)",
    "numeric": "numeric (every layer dequantized by comfy-kitchen and compared with the source)",
}


def mode_text(mode: str, coverage: dict | None) -> str:
    """What was checked, never more: with layers left undecoded the numeric claim names how many."""
    if mode == "numeric" and coverage and coverage.get("unchecked"):
        n, d = coverage["compared"], coverage["declared"]
        return (f"numeric for {n} of {d} quantized layers (dequantized by comfy-kitchen and compared with the "
                f"source); {d - n} quantized layers NOT checked")
    return MODE_TEXT.get(mode, mode)


@dataclass
class Report:
    checkpoint: str
    source: str | None
    reference: str | None
    mode: str
    strict: bool
    findings: Findings
    min_comfy: str
    min_comfy_why: list[str]
    layers: dict[str, int]                       # format -> count of quantized layers
    tensors: int
    shapes_from: str | None
    timings: dict[str, float] = field(default_factory=dict)
    bytes_checked: int = 0
    calibration: dict | None = None              # verify --calibration: per-layer scale vs calibrated
    coverage: dict | None = None                 # numeric mode: declared / compared / unchecked layers

    @property
    def passed(self) -> bool:
        return self.findings.count(ERROR) == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def summary_line(self) -> str:
        q = ", ".join(f"{n} {fmt}" for fmt, n in sorted(self.layers.items())) or "no quantized layers"
        verdict = "PASS" if self.passed else "FAIL"
        return (f"{verdict}: {self.checkpoint}: {self.tensors} tensors, {q}; "
                f"{self.findings.count(ERROR)} errors, {self.findings.count(WARNING)} warnings; "
                f"needs {'any ComfyUI' if self.min_comfy == 'any' else 'ComfyUI >= ' + self.min_comfy}; checked: {mode_text(self.mode, self.coverage)}"
                + (" (strict)" if self.strict else ""))

    def lines(self, verbose: bool = False) -> list[str]:
        out = [f.line() for f in self.findings.all() if verbose or f.severity != INFO]
        out.append(self.summary_line())
        return out

    def as_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "source": self.source, "reference": self.reference,
                "mode": self.mode, "strict": self.strict, "passed": self.passed, "exit_code": self.exit_code,
                "min_comfy": self.min_comfy, "min_comfy_because": self.min_comfy_why,
                "quantized_layers": self.layers, "tensors": self.tensors, "shapes_from": self.shapes_from,
                "errors": self.findings.count(ERROR), "warnings": self.findings.count(WARNING),
                "findings": [f.as_dict() for f in self.findings.all()],
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "bytes_checked": self.bytes_checked,
                "checked": mode_text(self.mode, self.coverage),
                **({"coverage": self.coverage} if self.coverage is not None else {}),
                **({"calibration": self.calibration} if self.calibration is not None else {})}


def verify(checkpoint, source=None, reference=None, *, strict: bool = False, header_only: bool = False,
           structure_only: bool = False, progress=None, device: str = "cpu", calibration=None,
           allow_unchecked: bool = False) -> Report:
    """Run the gate. Raises quant.errors.InputError for unreadable inputs (exit 2).
    ``device``: where comfy-kitchen's eager dequantizers run for the numeric check (cpu or cuda).
    ``calibration``: a calibration JSON path (or loaded ActivationStatistics): activation scales far from it are errors.
    ``allow_unchecked``: a declared format quantgate cannot decode is a warning instead of an error (the summary
    then says how many layers were not checked)."""
    if Device.of(device).is_cuda and not __import__("torch").cuda.is_available():
        from quant.errors import UsageError
        raise UsageError("--device cuda requested but no CUDA device is available")
    if calibration is not None and not hasattr(calibration, "layer"):
        from quant.activations import statistics as _cal
        calibration = _cal.load(calibration)
    t0 = time.perf_counter()
    f = Findings()
    src_obj = None
    cal_rows = None
    coverage: dict = {}
    with open_source(checkpoint) as ck:
        st = build(ck)
        try:
            if source is not None:
                src_obj = open_source(source)
            ref, shapes_from = reference_shapes(st, src_obj)
            plain = layout_rules.run(st, f, ref, allow_unchecked)
            log_scales.run(st, f)                      # 8-bit log-coded scales: name them, point to repair
            non_transformer.run(st, f)                 # VAEs / text encoders: what ComfyUI can quantize
            scalars = value_rules.run(st, f)
            if calibration is not None:
                from . import calibration_rules
                cal_rows = calibration_rules.run(st, f, calibration, scalars)
                cal_rows["provenance"] = calibration_rules.provenance(st, f, calibration, source)
            if source is not None:
                from . import calibration_rules
                file_prov = calibration_rules.file_provenance(st, f, source)
                if file_prov is not None:
                    cal_rows = {**(cal_rows or {}), "file_provenance": file_prov}
            t1 = time.perf_counter()
            mode, nbytes = _data(st, src_obj, f, progress, header_only=header_only, plain=plain, device=device,
                                 coverage=coverage, allow_unchecked=allow_unchecked)
            t2 = time.perf_counter()
        finally:
            if src_obj is not None:
                src_obj.close()
        mc, why, layers = _compat(st, f)
        n_tensors = len(st.infos)
    if reference is not None:
        from harness.verify.layout_diff import diff_paths
        d = diff_paths(checkpoint, reference, structure_only=structure_only)
        for g in d.groups:
            sev = INFO if g.equivalent else ERROR
            f.add(sev, "reference.diff", g.text(), g.examples)
    if strict:
        f.promote_warnings()
    rep = Report(str(checkpoint), None if source is None else str(source),
                 None if reference is None else str(reference), mode, strict, f, mc, why, layers, n_tensors,
                 shapes_from, bytes_checked=nbytes, calibration=cal_rows,
                 coverage=coverage or None)
    rep.timings = {"rules": t1 - t0, "data": t2 - t1, "total": time.perf_counter() - t0}
    return rep


def _data(st, src_obj, f: Findings, progress, *, header_only: bool, plain, device: str, coverage: dict,
          allow_unchecked: bool) -> tuple[str, int]:
    """The tensor-data check of the mode asked for -> (mode, bytes checked)."""
    if src_obj is not None:
        from . import numeric       # torch and comfy-kitchen: only when data is compared
        return "numeric", numeric.compare(st, src_obj, f, progress, device=device, coverage=coverage,
                                          allow_unchecked=allow_unchecked)
    if not header_only:
        from . import numeric   # torch: only when tensor data is read
        nbytes = numeric.statistics(st, f, progress)
        if st.declared:
            f.info("stats.note", "no --source given: the numbers were checked for plausibility only (NaN codes, "
                                 "range use, scale magnitudes, block-scale alignment); nibble order, row-major "
                                 "block scales and e5m2-vs-e4m3 data are only proven with --source")
        return "statistics", nbytes
    if st.declared and not plain:
        f.info("stats.note", "header-only check: tensor data was not read")
    return "header-only", 0


def _compat(st, f: Findings) -> tuple[str, list, dict[str, int]]:
    """The oldest ComfyUI that loads the file (and why), the layers per format, each format's runtime note."""
    mc, why = layout_rules.min_comfy(st)
    layers: dict[str, int] = {}
    for la in st.declared:
        name = la.spec.name if la.spec else str(la.comfy_format)
        layers[name] = layers.get(name, 0) + 1
    if mc != "any":
        f.info("compat.min-comfy", f"needs ComfyUI >= {mc} ({'; '.join(why)})")
    from quant.formats import FORMATS
    for name in layers:
        note = getattr(FORMATS.get(name), "runtime_note", "")
        if note:
            f.info("compat.note", note)
    return mc, why, layers


__all__ = ["verify", "Report", "ERROR", "WARNING", "INFO", "MODES"]
