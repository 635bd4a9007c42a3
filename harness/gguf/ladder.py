"""The quality ladder: weight error of each candidate against the same source, per layer and for the
whole model. Candidates: GGUF files (dequantized by gguf-py), FP8 and NVFP4-mixed under a hand-written
preset, NVFP4-mixed under a GGUF-derived preset (quantized and dequantized through quant.formats).

Errors (W = source weight in float32, W' = what the candidate computes with):
  relative Frobenius  ||W - W'||_F / ||W||_F
  SQNR (dB)           10 log10(||W||^2 / ||W - W'||^2)      (inf when W' == W: a kept layer)
The whole-model row pools the squared norms of the same layers for every column (the 2-D weights that
any candidate quantizes), so the columns are comparable.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path

from quant.errors import InputError, UsageError


@dataclass
class Column:
    label: str
    kind: str                     # "gguf" | a format name (fp8, nvfp4, int8-convrot, ...)
    detail: str                   # GGUF file name or preset name
    what: dict[str, str] = field(default_factory=dict)        # layer -> GGML type or action
    err2: dict[str, float] = field(default_factory=dict)      # layer -> ||W - W'||^2
    sha256: str | None = None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in self.what.values():
            out[v] = out.get(v, 0) + 1
        return dict(sorted(out.items()))


def sqnr_db(ref2: float, err2: float) -> float:
    if err2 <= 0:
        return math.inf
    if ref2 <= 0:
        return -math.inf
    return 10.0 * math.log10(ref2 / err2)


def _num(x: float):
    return None if not math.isfinite(x) else round(x, 6)


@dataclass
class Ladder:
    source: str
    layers: list[str]
    ref2: dict[str, float]
    columns: list[Column]

    def rel(self, c: Column, layer: str | None = None) -> float:
        if layer is None:
            return math.sqrt(sum(c.err2.values()) / sum(self.ref2.values()))
        return math.sqrt(c.err2[layer] / self.ref2[layer])

    def sqnr(self, c: Column, layer: str | None = None) -> float:
        if layer is None:
            return sqnr_db(sum(self.ref2.values()), sum(c.err2.values()))
        return sqnr_db(self.ref2[layer], c.err2[layer])

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "metric": {"rel_frobenius": "||W-W'||_F/||W||_F", "sqnr_db": "10*log10(||W||^2/||W-W'||^2); null = exact"},
            "columns": [{
                "label": c.label, "kind": c.kind, "detail": c.detail, "sha256": c.sha256, "counts": c.counts(),
                "whole_model": {"rel_frobenius": _num(self.rel(c)), "sqnr_db": _num(self.sqnr(c))},
            } for c in self.columns],
            "layers": [{
                "name": n,
                **{c.label: {"what": c.what[n], "rel_frobenius": _num(self.rel(c, n)), "sqnr_db": _num(self.sqnr(c, n))}
                   for c in self.columns},
            } for n in self.layers],
        }

    def table(self, per_layer: bool = True) -> str:
        labels = [c.label for c in self.columns]
        w0 = max([len(n) for n in self.layers] + [len("whole model (rel. Frobenius)")])
        ws = [max(len(lb), 12) for lb in labels]
        fmt_s = lambda x: "exact" if math.isinf(x) and x > 0 else f"{x:.2f}"  # noqa: E731
        head = f"{'SQNR dB':<{w0}}  " + "  ".join(f"{lb:>{w}}" for lb, w in zip(labels, ws))
        lines = [head, "-" * len(head)]
        if per_layer:
            for n in self.layers:
                cells = []
                for c, w in zip(self.columns, ws):
                    cells.append(f"{fmt_s(self.sqnr(c, n)) + ' ' + _short(c.what[n]):>{w}}")
                lines.append(f"{n:<{w0}}  " + "  ".join(cells))
            lines.append("-" * len(head))
        lines.append(f"{'whole model (SQNR dB)':<{w0}}  " + "  ".join(
            f"{fmt_s(self.sqnr(c)):>{w}}" for c, w in zip(self.columns, ws)))
        lines.append(f"{'whole model (rel. Frobenius)':<{w0}}  " + "  ".join(
            f"{self.rel(c):>{w}.5f}" for c, w in zip(self.columns, ws)))
        return "\n".join(lines)


def _short(what: str) -> str:
    return {"keep": "=", "nvfp4": "n4", "fp8": "f8"}.get(what, what)


def _gguf_label(model) -> str:
    ft = (model.file_type or "").replace("MOSTLY_", "") or model.path.stem
    return f"gguf {ft}"


def _check_formats(names) -> None:
    from quant import formats as F
    comfy_targets = [n for n, f in F.FORMATS.items() if f.target and not f.legacy]
    for f in names:
        if f not in comfy_targets:
            raise UsageError(f"--formats takes {', '.join(comfy_targets)}, not {f!r}")


def _converter_columns(cols, layers, src, shapes) -> dict:
    """FP8 / NVFP4 columns through the converter's own quantization path (quant.quantize.quantize_layers, RTN,
    the source tensor as convert reads it), so each column scores exactly the bytes `convert` writes:
    {column label: iterator of LayerResult, in ``layers`` order}."""
    from quant.quantize import LayerJob, quantize_layers
    out = {}
    for c, spec in cols:
        if spec[0] != "gguf":
            jobs = [LayerJob(n[: -len(".weight")], n, spec[2].for_action(spec[1][n]),
                             (lambda n=n: src.get(n)), None, tuple(shapes[n]))
                    for n in layers if spec[1].get(n, "keep") != "keep"]
            out[c.label] = iter(quantize_layers(jobs))
    return out


def _converter_dequant(r, n: str, w):
    """The weight ``convert`` writes for layer tensor ``n`` (a LayerResult of :func:`_converter_columns`), decoded."""
    import torch
    assert r.job.name == n, (r.job.name, n)
    pre = r.job.layer + "."
    raw = {k[len(pre):]: v for k, v in r.tensors.items() if k.startswith(pre)}
    return r.job.fmt.dequantize(raw, tuple(w.shape), torch.float32).reshape(w.shape)


def _gguf_column(g, shapes: dict, gsrcs: list):
    """The column of one GGUF file (opened into ``gsrcs``, which the caller closes)."""
    from quant.gguf import model as gguf_model
    from quant.sources import open_source
    model = gguf_model.read(g)
    m = gguf_model.match(model, shapes)
    if m.shape_mismatch or not m.pairs:
        raise InputError("the GGUF does not describe this source: " + "; ".join(m.lines()[1:]), g)
    gs = open_source(g)
    gsrcs.append(gs)
    names = {v: t.name for v, t in model.tensors.items()}
    c = Column(_gguf_label(model), "gguf", Path(g).name, sha256=gguf_model.sha256_file(g))
    return c, ("gguf", gs, {s: names[k] for s, k in m.pairs.items()}, model)


def _plan_columns(src, shapes: dict, formats, preset_names, derived) -> list:
    """One column per format x preset (hand presets, and GGUF-derived ones for four-bit formats)."""
    from quant import formats as F
    from quant import presets
    from quant.convert import make_plan
    from quant.gguf import model as gguf_model
    plans = []
    for fmt in formats:
        for pn in preset_names:
            plans.append((fmt, make_plan(src, pn, fmt)))
        if F.get(fmt).four_bit:
            for g, mapping in derived:
                pr = gguf_model.derive_preset(gguf_model.read(g), mapping, source_shapes=shapes)
                plans.append((fmt, presets.plan(pr, fmt, [(n, src.info(n).dtype, shapes[n]) for n in shapes],
                                                source=str(src.path))))
    cols = []
    for fmt, pl in plans:
        prov = pl.preset.provenance or {}
        label = f"{fmt} {pl.preset.name}"
        if prov.get("sha256"):          # GGUF-derived: name it by the GGUF type it came from
            label = f"{fmt} via {str(prov.get('file_type') or prov.get('gguf_file')).replace('MOSTLY_', '')}"
        c = Column(label, fmt, pl.preset.name, sha256=prov.get("sha256"))
        cols.append((c, ("plan", {d.name: d.action for d in pl.decisions}, F.get(fmt))))
    return cols


def _quantized_layers(shapes: dict, cols: list) -> list[str]:
    """The 2-D weights any candidate stores quantized."""
    from quant.gguf import model as gguf_model
    layers = []
    for n, s in shapes.items():
        if len(s) != 2 or not n.endswith(".weight"):
            continue
        q = False
        for c, spec in cols:
            if spec[0] == "gguf":
                gname = spec[2].get(n)
                q |= gname is not None and spec[1].info(gname).stored not in gguf_model.FLOAT_TYPES
            else:
                q |= spec[1].get(n, "keep") != "keep"
        if q:
            layers.append(n)
    return layers


def run(source, ggufs=(), formats=("fp8", "nvfp4"), preset_names=(None,), derived=(), *, progress=False) -> Ladder:
    """``preset_names``: hand presets (None = detected from the keys); ``derived``: [(gguf path, Mapping)]
    for NVFP4-mixed under GGUF-derived presets."""
    import torch

    from quant import formats as F  # noqa: F401 - the gate's FP8 columns (issue 21) name it here
    from quant.sources import open_source
    _check_formats(formats)
    if not ggufs and not formats:
        raise UsageError("nothing to compare: give --gguf files and/or --formats")
    with open_source(source) as src:
        if src.kind == "gguf":
            raise UsageError("the ladder's SOURCE is the unquantized checkpoint (.safetensors), not a GGUF", source)
        shapes = {n: src.info(n).shape for n in src.keys()}
        cols: list[tuple[Column, object]] = []
        gsrcs = []
        try:
            for g in ggufs:
                cols.append(_gguf_column(g, shapes, gsrcs))
            cols += _plan_columns(src, shapes, formats, preset_names, derived)
            layers = _quantized_layers(shapes, cols)
            if not layers:
                raise UsageError("no candidate quantizes any 2-D weight of this source; nothing to compare", source)
            target_fmt = _converter_columns(cols, layers, src, shapes)
            ref2: dict[str, float] = {}
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=len(layers), desc="ladder", unit="layer", leave=False, dynamic_ncols=True)
            for n in layers:
                w = src.get(n).to(torch.float32)
                ref2[n] = float(w.double().pow(2).sum())
                for c, spec in cols:
                    if spec[0] == "gguf":
                        gname = spec[2].get(n)
                        if gname is None:
                            raise InputError(f"tensor {n!r} is not in the GGUF", c.detail)
                        wq = spec[1].get(gname).to(torch.float32).reshape(w.shape)
                        c.what[n] = spec[1].info(gname).stored
                    else:
                        act = spec[1].get(n, "keep")
                        c.what[n] = act
                        if act == "keep":
                            wq = w
                        else:
                            wq = _converter_dequant(next(target_fmt[c.label]), n, w)
                    c.err2[n] = float((w.double() - wq.double()).pow(2).sum())
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.close()
        finally:
            for gs in gsrcs:
                gs.close()
    return Ladder(str(source), layers, ref2, [c for c, _ in cols])


# --- HTML section + plot -----------------------------------------------------------------------

def _inputs(ladder: Ladder) -> list:
    return [ladder.source, *(c.detail for c in ladder.columns if c.kind == "gguf")]


def plot_sqnr(ladder: Ladder, png, inputs=()) -> Path:
    """SQNR per layer per format (matplotlib, Agg, imported here only)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    png = Path(png)
    n = len(ladder.layers)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.32 * n + 2.5), 4.2), dpi=110)
    finite = [ladder.sqnr(c, lay) for c in ladder.columns for lay in ladder.layers
              if math.isfinite(ladder.sqnr(c, lay))]
    top = (max(finite) if finite else 60.0) + 6.0
    for c in ladder.columns:
        ys = [min(ladder.sqnr(c, lay), top) for lay in ladder.layers]
        ax.plot(range(n), ys, marker="o", markersize=3, linewidth=1.2,
                label=f"{c.label} ({ladder.sqnr(c):.1f} dB)")
    ax.set_xticks(range(n))
    ax.set_xticklabels([lay.removesuffix(".weight") for lay in ladder.layers], rotation=75, fontsize=6)
    ax.set_ylabel("SQNR (dB), higher is better")
    ax.set_title("weight SQNR per layer (kept layers drawn at the top)", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    import io

    from quant.outputs import write_bytes          # quantgate's one output path
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(png, buf.getvalue(), [*inputs, *_inputs(ladder)], what="ladder plot")
    return png


def html_section(ladder: Ladder, out_dir, png_name: str = "ladder_sqnr.png") -> str:
    """An HTML section (table + plot) for a report; the PNG is written into ``out_dir`` beside it."""
    png = plot_sqnr(ladder, Path(out_dir) / png_name)
    e = html.escape
    fmt = lambda x: "exact" if math.isinf(x) else f"{x:.2f}"  # noqa: E731
    head = "".join(f"<th>{e(c.label)}</th>" for c in ladder.columns)
    rows = []
    for c in ladder.columns:
        counts = ", ".join(f"{v} {k}" for k, v in c.counts().items())
        rows.append(f"<tr><td>{e(c.label)}</td><td>{e(c.detail)}</td><td>{e(counts)}</td>"
                    f"<td>{ladder.rel(c):.5f}</td><td>{fmt(ladder.sqnr(c))}</td></tr>")
    per = []
    for n in ladder.layers:
        cells = "".join(f"<td>{fmt(ladder.sqnr(c, n))} <small>{e(c.what[n])}</small></td>" for c in ladder.columns)
        per.append(f"<tr><td><code>{e(n)}</code></td>{cells}</tr>")
    return (
        "<section class='ladder'><h2>Quality ladder: weight error vs the source</h2>"
        f"<p>Source <code>{e(ladder.source)}</code>; {len(ladder.layers)} layers (every 2-D weight any candidate "
        "quantizes). GGUF columns are dequantized by gguf-py; FP8/NVFP4 columns are quantized and dequantized by "
        "quantgate's kernels. Relative Frobenius error and SQNR of the pooled layers.</p>"
        "<table><tr><th>candidate</th><th>from</th><th>layers</th><th>rel. Frobenius</th><th>SQNR dB</th></tr>"
        + "".join(rows) + "</table>"
        f"<p><img src='{e(png.name)}' alt='SQNR per layer per format' style='max-width:100%'></p>"
        f"<details><summary>per layer (SQNR dB, type)</summary><table><tr><th>layer</th>{head}</tr>"
        + "".join(per) + "</table></details></section>")


def write_html(ladder: Ladder, path) -> Path:
    """A standalone page holding :func:`html_section` (atomic)."""
    from quant.outputs import write_text
    path = Path(path)
    body = html_section(ladder, path.parent, png_name=f"{path.stem}_sqnr.png")
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>quantgate quality ladder</title>"
            "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}</style></head><body>"
            + body + "</body></html>\n")
    return write_text(path, page, _inputs(ladder), what="ladder page")
