"""Findings (severity + rule + layers + one sentence) and the report that groups them."""
from __future__ import annotations

from dataclasses import dataclass, field

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}

# rule id -> (group, what the rule protects); the group names the pytest format tests.
RULES = {
    "carrier.header-invalid": ("carrier", "header _quantization_metadata is valid JSON {format_version, layers:{name:{format}}}"),
    "carrier.tensor-invalid": ("carrier", "<layer>.comfy_quant is a 1-D U8 tensor holding a JSON object with 'format'"),
    "carrier.disagree": ("carrier", "header and per-layer comfy_quant carriers declare the same layers identically"),
    "carrier.mixed-legacy": ("carrier", "no legacy scaled_fp8 marker together with comfy_quant/_quantization_metadata"),
    "carrier.missing": ("carrier", "quantized weights and scale tensors belong to a declared quantized layer"),
    "carrier.unknown-format": ("carrier", "declared format exists in ComfyUI's QUANT_ALGOS"),
    "carrier.orphan": ("carrier", "every declared layer has tensors in the file"),
    "format.unchecked": ("carrier", "format is one quantgate can check (error unless --allow-unchecked)"),
    "loader.custom-node": ("carrier", "the file loads in stock ComfyUI (a custom node's dialect is named with its loader)"),
    "conf.params": ("carrier", "a layer's comfy_quant parameters (ConvRot group size, group_size) fit the format and the weight"),
    "numeric.unchecked": ("numeric", "every declared quantized layer was decoded and compared with the source"),
    "quant.plain-cast": ("carrier", "fp8 tensors without any scale (plain dtype cast)"),
    "marker.dtype": ("marker", "scaled_fp8 marker is F8_E4M3"),
    "marker.shape": ("marker", "scaled_fp8 marker has 0 or 2 elements"),
    "companion.missing": ("companions", "every required companion tensor is present"),
    "companion.unexpected": ("companions", "no keys a quantized layer may not have"),
    "companion.dtype": ("dtypes", "weight and scale dtypes match the declared format"),
    "companion.dtype-cast": ("dtypes", "per-tensor scales are F32 (F16/BF16 work: ComfyUI casts them)"),
    "companion.shape": ("shapes", "weight and scale shapes match the format's rules"),
    "companion.alt-shape": ("shapes", "scalar stored as [1] instead of [] (accepted)"),
    "layer.not-linear": ("layers", "only Linear weights are quantized (no norms, biases, convs, modulation tables)"),
    "layer.detection": ("layers", "layers ComfyUI's model detection reads stay unquantized"),
    "tensor.dtype": ("layers", "unquantized tensors are float (F16/BF16/F32)"),
    "scale.value": ("scales", "scales are finite and > 0"),
    "scale.log8": ("scales", "scales are floats, not 8-bit log codes (quantgate repair expands them)"),
    "scale.magnitude": ("scales", "scales decode to plausible weight magnitudes (not unit/inverted)"),
    "activation.policy": ("activation", "fp8 layers have a calibrated input_scale or full_precision_matrix_mult"),
    "activation.unit-scale": ("activation", "activation scales are calibrated, not a default 1.0"),
    "input_scale.from-weight": ("activation", "input_scale is not a weight statistic (== weight_scale[_2])"),
    "input_scale.implausible": ("activation", "input_scale implies a plausible activation range"),
    "input_scale.calibration": ("activation", "activation scales clip at most 0.1% of calibrated activations and are < 8x the calibrated amax scale"),
    "calibration.foreign": ("activation", "the calibration was recorded on this model (its model sha256 is the source's)"),
    "numeric.mismatch": ("numeric", "dequantized weights (comfy-kitchen) match the source"),
    "numeric.rows": ("numeric", "every output channel (row) and nvfp4 16-block is within the format's worst-case error"),
    "numeric.unquantized-mismatch": ("numeric", "unquantized tensors equal the source within dtype conversion"),
    "numeric.bias-corrected": ("numeric", "biases of quantized layers may carry a small bias correction"),
    "numeric.source-missing": ("numeric", "every source tensor is present in the checkpoint"),
    "numeric.extra-tensor": ("numeric", "no tensors the source does not have (other than companions/markers)"),
    "numeric.shape": ("numeric", "checkpoint shapes fit the source's shapes"),
    "stats.nonfinite": ("statistics", "quantized data holds no NaN/Inf codes"),
    "stats.range": ("statistics", "fp8 weights use the e4m3 range; nvfp4 blocks use their scale"),
    "stats.note": ("statistics", "what the statistics-only check cannot prove"),
    "model.kind": ("model", "what a non-transformer file is (VAE, text encoder) and which modules ComfyUI can quantize"),
    "model.vae-fp8": ("model", "VAE weights are not stored fp8/8-bit (ComfyUI's VAE has no quantized ops)"),
    "model.quantized-norm": ("model", "text-encoder norms are not stored quantized"),
    "model.quantized-embedding": ("model", "quantized embeddings need a ComfyUI with a mixed-precision Embedding"),
    "compat.min-comfy": ("compat", "minimum ComfyUI version the file needs"),
    "compat.note": ("compat", "compatibility notes"),
    "reference.diff": ("reference", "layout equals (or is equivalent to) the reference"),
}


def _cut(name: str, limit: int = 120) -> str:
    """A layer name as printed in a finding's line: long names are cut, lone surrogates escaped."""
    s = name if len(name) <= limit else f"{name[:limit]}... ({len(name):,} chars)"
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def group_of(rule: str) -> str:
    return RULES.get(rule, (rule.split(".")[0], ""))[0]


@dataclass
class Finding:
    severity: str
    rule: str
    message: str                        # one sentence a user understands; "{n}" is replaced by the count
    layers: list[str] = field(default_factory=list)

    def key(self):
        return (self.severity, self.rule, self.message)

    def as_dict(self) -> dict:
        return {"severity": self.severity, "rule": self.rule, "group": group_of(self.rule),
                "message": self.text(), "layers": self.layers}

    def text(self) -> str:
        return self.message.replace("{n}", str(len(self.layers)))

    def line(self, max_layers: int = 3) -> str:
        where = ""
        if self.layers:
            shown = ", ".join(_cut(x) for x in self.layers[:max_layers])
            more = f" (+{len(self.layers) - max_layers} more)" if len(self.layers) > max_layers else ""
            n = len(self.layers)
            unit = "tensor" if all(x.rsplit(".", 1)[-1] in ("bias", "weight") for x in self.layers) else "layer"
            where = f" [{n} {unit}{'s' if n != 1 else ''}: {shown}{more}]"
        return f"{self.severity}: {self.rule}: {_cut(self.text(), 600)}{where}"


class Findings:
    """Collects findings; identical (severity, rule, message) findings merge into one line."""

    def __init__(self):
        self._by_key: dict[tuple, Finding] = {}
        self._seen: dict[tuple, set] = {}

    def add(self, severity: str, rule: str, message: str, layers=None):
        if isinstance(layers, str):
            layers = [layers]
        k = (severity, rule, message)
        f = self._by_key.get(k)
        if f is None:
            f = self._by_key[k] = Finding(severity, rule, message, [])
            self._seen[k] = set()
        seen = self._seen[k]
        for layer in layers or []:          # a set beside the list: linear in the number of layers
            if layer not in seen:
                seen.add(layer)
                f.layers.append(layer)

    def error(self, rule, message, layers=None):
        self.add(ERROR, rule, message, layers)

    def warning(self, rule, message, layers=None):
        self.add(WARNING, rule, message, layers)

    def info(self, rule, message, layers=None):
        self.add(INFO, rule, message, layers)

    def extend(self, other: "Findings"):
        for f in other.all():
            self.add(f.severity, f.rule, f.message, f.layers)

    def all(self) -> list[Finding]:
        return sorted(self._by_key.values(), key=lambda f: (SEVERITY_ORDER[f.severity], f.rule, f.message))

    def count(self, severity: str) -> int:
        return sum(1 for f in self._by_key.values() if f.severity == severity)

    def rules(self, severity: str | None = None) -> set[str]:
        return {f.rule for f in self._by_key.values() if severity is None or f.severity == severity}

    def drop(self, rule: str, layers, severity: str | None = None) -> list[str]:
        """Remove ``layers`` from the findings of ``rule`` (of ``severity``); a finding left without layers
        goes. Returns the layers removed (a later rule knows better than a header-only guess)."""
        layers, removed = set(layers), []
        for k in list(self._by_key):
            f = self._by_key[k]
            if f.rule != rule or (severity is not None and f.severity != severity) or not f.layers:
                continue
            gone = [x for x in f.layers if x in layers]
            if not gone:
                continue
            removed += [x for x in gone if x not in removed]
            f.layers = [x for x in f.layers if x not in layers]
            if not f.layers:
                del self._by_key[k]
        return removed

    def promote_warnings(self):
        """--strict: every warning becomes an error."""
        old = list(self._by_key.values())
        self._by_key, self._seen = {}, {}
        for f in old:
            self.add(ERROR if f.severity == WARNING else f.severity, f.rule, f.message, f.layers)
