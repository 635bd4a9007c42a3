"""Nightly history: compare two pytest-benchmark records, and draw the trend of many.

A nightly record IS a pytest-benchmark JSON (``./qg bench`` or ``./qg test -m gpu --benchmark-json``):
machine and commit come from pytest-benchmark itself (plus the GPU, driver, torch and ComfyUI facts our
``pytest_benchmark_update_machine_info`` hook adds), each benchmark's median time from its stats, and the
figures that are not times (SSIM, peak VRAM, GB/s, seconds per step) from its ``extra_info``.

Regression rules (``compare``): a benchmark slower by more than 10 % (median), an ``ssim*`` figure lower by
more than 0.01, a ``*vram*`` figure higher by more than 5 %, a throughput figure (``*_mb_s``, ``*_gb_s``,
``*per_s*``) lower by more than 10 %, a ``*seconds*``/``*_s`` / ``*s_per_step*`` figure higher by more than 10 %.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from quant.errors import InputError

SLOWER = 0.10
SSIM_DROP = 0.01
VRAM_RISE = 0.05
SCHEMA_KEYS = ("machine_info", "commit_info", "benchmarks", "datetime")


@dataclass
class Change:
    benchmark: str
    figure: str
    old: float
    new: float
    rule: str
    regression: bool

    @property
    def delta(self) -> str:
        if self.figure.startswith("ssim"):
            return f"{self.new - self.old:+.4f}"
        return f"{(self.new / self.old - 1) * 100:+.1f} %" if self.old else "n/a"

    def as_dict(self) -> dict:
        return {"benchmark": self.benchmark, "figure": self.figure, "old": self.old, "new": self.new,
                "delta": self.delta, "rule": self.rule, "regression": self.regression}


def load(path) -> dict:
    """A nightly record through its one validated loader (quant.inputs: bounded JSON, pytest-benchmark's
    fields typed, finite numbers, an ISO datetime)."""
    from quant.inputs import nightly_record
    return nightly_record(path)


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def figures(bench: dict) -> dict[str, float]:
    """The comparable numbers of one benchmark: its median seconds plus numeric extra_info."""
    out = {}
    med = _num(bench["stats"].get("median"))
    if med is not None:
        out["median_s"] = med
    for k, v in (bench.get("extra_info") or {}).items():
        n = _num(v)
        if n is not None:
            out[k] = n
        elif isinstance(v, dict):             # nested per-case figures: {"fp8": {"ssim": ..}} -> "fp8.ssim"
            for k2, v2 in v.items():
                n2 = _num(v2)
                if n2 is not None:
                    out[f"{k}.{k2}"] = n2
    return out


# set-up costs of the box, not of the product: the GPU nightly generates its source model only when the box
# has none cached (a real H200 pair of records read 0 -> 38.4 s and was flagged as a regression)
INFORMATIVE = {"source_generate_s"}


def rule_for(figure: str):
    """(kind, test(old, new) -> regression?) or None when the figure is informative only."""
    f = figure.lower().rsplit(".", 1)[-1]
    if f in INFORMATIVE:
        return None
    if f.startswith("ssim") or f.endswith("ssim") or "_ssim" in f:
        return "SSIM lower by > 0.01", lambda o, n: n < o - SSIM_DROP
    if "vram" in f:
        return "VRAM higher by > 5 %", lambda o, n: n > o * (1 + VRAM_RISE)
    # throughput first (mb_per_s_median holds a "_s_"); "s_per_step" is a time, not a rate
    if re.search(r"(mb|gb)_?(per_)?s($|_)|_per_s($|_)", f) or f.endswith(("gbps", "mbps")):
        return "throughput lower by > 10 %", lambda o, n: n < o * (1 - SLOWER)
    if f == "median_s" or "s_per_step" in f or re.search(r"(^|_)(s|seconds|sec)($|_)|seconds", f):
        return "slower by > 10 %", lambda o, n: n > o * (1 + SLOWER)
    return None


def compare(old: dict, new: dict) -> tuple[list[Change], list[str], list[str]]:
    """Changes per figure of every benchmark both records hold; plus names only in old / only in new."""
    ob = {b["name"]: b for b in old["benchmarks"]}
    nb = {b["name"]: b for b in new["benchmarks"]}
    changes = []
    for name in [n for n in nb if n in ob]:
        fo, fn = figures(ob[name]), figures(nb[name])
        for fig in [f for f in fn if f in fo]:
            r = rule_for(fig)
            if r is None:
                continue
            kind, test = r
            changes.append(Change(name, fig, fo[fig], fn[fig], kind, bool(test(fo[fig], fn[fig]))))
    return changes, sorted(set(ob) - set(nb)), sorted(set(nb) - set(ob))


def describe(rec: dict) -> str:
    c, m = rec.get("commit_info") or {}, rec.get("machine_info") or {}
    gpu = (m.get("quantgate") or {}).get("gpu") or m.get("cpu", {}).get("brand_raw") or m.get("node", "?")
    return f"{rec.get('datetime', '?')[:19]} commit {str(c.get('id', '?'))[:10]}{' (dirty)' if c.get('dirty') else ''} on {gpu}"


def trend_html(records: list[tuple[str, dict]], out_html, max_plots: int = 40, *, overwrite: bool = True,
               inputs=()) -> Path:
    """One HTML page with a plot per benchmark figure over the records (sorted by date). PNGs beside it.
    Every file goes through quant.outputs (never over a record, ``overwrite`` = --force)."""
    import io
    from quant.outputs import check_output, write_bytes, write_text
    inputs = [*inputs, *(p for p, _ in records)]
    check_output(out_html, inputs, overwrite=overwrite, what="trend page")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import html as H
    out_html = Path(out_html)
    recs = sorted(records, key=lambda r: r[1].get("datetime", ""))
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for i, (_, rec) in enumerate(recs):
        for b in rec["benchmarks"]:
            for fig, v in figures(b).items():
                if rule_for(fig) is not None:
                    series.setdefault((b["name"], fig), []).append((i, v))
    img_dir = out_html.parent / (out_html.stem + "_plots")
    body = []
    for j, ((name, fig), pts) in enumerate(sorted(series.items())[:max_plots]):
        fig_, ax = plt.subplots(figsize=(6, 2.6), dpi=90)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
        ax.set_title(f"{name} · {fig}", fontsize=8)
        ax.set_xticks(range(len(recs)))
        ax.set_xticklabels([r[1].get("datetime", "?")[5:16] for r in recs], rotation=30, fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
        fig_.tight_layout()
        png = img_dir / f"plot{j:03d}.png"
        buf = io.BytesIO()
        fig_.savefig(buf, format="png")
        plt.close(fig_)
        write_bytes(png, buf.getvalue(), inputs, overwrite=True, what="trend plot")
        body.append(f"<figure><img src='{H.escape(img_dir.name)}/{png.name}'><figcaption>{H.escape(name)} · "
                    f"{H.escape(fig)} ({H.escape(rule_for(fig)[0])})</figcaption></figure>")
    rows = "".join(f"<li>{H.escape(Path(p).name)}: {H.escape(describe(r))}</li>" for p, r in recs)
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>quantgate nightly trend</title><style>"
            "body{font:14px system-ui,sans-serif;margin:2em}figure{display:inline-block;margin:6px}"
            "figcaption{font-size:11px;color:#555}</style></head><body><h1>quantgate nightly trend</h1>"
            f"<p>{len(recs)} records:</p><ul>{rows}</ul>{''.join(body)}</body></html>")
    write_text(out_html, page, inputs, overwrite=overwrite, what="trend page")
    return out_html
