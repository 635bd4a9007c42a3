"""Nightly history: compare two pytest-benchmark records, and draw the trend of many.

A nightly record IS a pytest-benchmark JSON (``./qg bench`` or ``./qg test -m gpu --benchmark-json``):
machine and commit come from pytest-benchmark itself (plus the GPU, driver, torch and ComfyUI facts our
``pytest_benchmark_update_machine_info`` hook adds), each benchmark's median time from its stats, and the
figures that are not times (SSIM, peak VRAM, GB/s, seconds per step) from its ``extra_info``.

Regression rules (``compare``), decided from the runs' OWN spread (issue 21: two one-repeat records of
unchanged code on one machine type read +41 % median and +84 % seconds per step):

* times (median, ``*seconds*`` / ``*_s`` / ``*s_per_step*``) and throughputs (``*_mb_s``, ``*_gb_s``, ``*per_s*``)
  with raw samples on both sides (a benchmark's ``stats.data`` rounds; ``<figure>_runs`` lists in
  ``extra_info``): with >= 3 samples each and enough of them that the exact test can reach p < 0.05 at all
  (not 3 vs 3: its smallest p is 0.05), a regression needs BOTH a one-sided Mann-Whitney rank test
  p < 0.05 and the best of N (min time / max throughput) worse by > 10 %; with fewer, the best of N must be
  worse by more than 10 % and more than the larger relative spread of the two runs;
* a throughput figure without samples of its own inherits its benchmark's timing spread (it is bytes / time);
* a figure with no spread on either side (one repeat each, no samples) is shown but not judged ("one repeat:
  no spread to judge by") -- the nightly records repeats so it can be;
* deterministic figures keep fixed rules: ``ssim*`` lower by > 0.01, ``*vram*`` higher by > 5 %.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from quant.errors import InputError

SLOWER = 0.10
RANK_P = 0.05          # one-sided Mann-Whitney U, exact
RANK_MIN_N = 3         # samples per side for the rank test, and it must be able to reach p < RANK_P at all:
                       # 3 vs 3 cannot (the smallest exact one-sided p is 1/C(6,3) = 0.05), 3 vs 4 can (1/35)
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
    old_spread: dict | None = None      # {"n", "min", "max", "rel"}: the run's own spread (None: one value)
    new_spread: dict | None = None
    decided: str = ""                   # how it was decided: "rank test p=..", "beyond spread ..", "fixed rule",
                                        # or "not judged: ..."

    @property
    def delta(self) -> str:
        if self.figure.startswith("ssim"):
            return f"{self.new - self.old:+.4f}"
        return f"{(self.new / self.old - 1) * 100:+.1f} %" if self.old else "n/a"

    def as_dict(self) -> dict:
        return {"benchmark": self.benchmark, "figure": self.figure, "old": self.old, "new": self.new,
                "delta": self.delta, "rule": self.rule, "regression": self.regression,
                "old_spread": self.old_spread, "new_spread": self.new_spread, "decided": self.decided}


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


def samples(bench: dict, figure: str) -> list[float] | None:
    """The raw repeats behind a figure: ``stats.data`` for the median time, ``extra_info[<figure>_runs]``
    for the others (None when the record has no repeats of it)."""
    if figure == "median_s":
        raw = bench["stats"].get("data")
    else:
        head, _, last = figure.rpartition(".")
        ei = bench.get("extra_info") or {}
        raw = (ei.get(head) or {}).get(f"{last}_runs") if head else ei.get(f"{figure}_runs")
    if not isinstance(raw, list):
        return None
    vals = [_num(x) for x in raw]
    return [v for v in vals if v is not None] or None


def spread(vals: list[float] | None) -> dict | None:
    """n, min, max and the relative spread of a run's repeats: IQR / median from 4 repeats, (max - min) / min
    below; None for fewer than 2."""
    if not vals or len(vals) < 2:
        return None
    v = sorted(vals)
    if len(v) >= 4:
        import statistics
        q = statistics.quantiles(v, n=4, method="inclusive")
        med = statistics.median(v)
        rel = (q[2] - q[0]) / med if med else None
    else:
        rel = (v[-1] - v[0]) / v[0] if v[0] else None
    return {"n": len(v), "min": v[0], "max": v[-1], "rel": None if rel is None else round(rel, 4)}


def _rank_p(new: list[float], old: list[float], worse: str) -> float:
    """One-sided exact Mann-Whitney U: P(new is not worse than old), ``worse`` "greater" (times) or "less"."""
    from scipy.stats import mannwhitneyu
    return float(mannwhitneyu(new, old, alternative=worse, method="exact").pvalue)


def _rank_can_decide(n_old: int, n_new: int) -> bool:
    """Whether the exact one-sided rank test of these sample counts can reach p < RANK_P (its smallest p is
    1 / C(n_old + n_new, n_old)); otherwise the spread rule decides (a test that can never fire would pass
    every regression)."""
    return 1 / math.comb(n_old + n_new, n_old) < RANK_P


def _judge_noisy(kind: str, ob: dict, nb: dict, fig: str, fo: float, fn: float):
    """(regression, decided, old spread, new spread) for a time or throughput figure, from the runs' spread."""
    so, sn = samples(ob, fig), samples(nb, fig)
    throughput = kind.startswith("throughput")
    if throughput and so is None and sn is None:          # bytes / time: its benchmark's timing spread
        to, tn = samples(ob, "median_s"), samples(nb, "median_s")
        spo, spn = spread(to), spread(tn)
    else:
        spo, spn = spread(so), spread(sn)
    best = (max if throughput else min)
    vo = best(so) if so else fo
    vn = best(sn) if sn else fn
    worse_by = (vo / vn - 1) if throughput else (vn / vo - 1) if vo else 0.0
    if so and sn and len(so) >= RANK_MIN_N and len(sn) >= RANK_MIN_N and _rank_can_decide(len(so), len(sn)):
        p = _rank_p(sn, so, "less" if throughput else "greater")
        reg = p < RANK_P and worse_by > SLOWER
        return reg, f"rank test p={p:.3g} (< {RANK_P} needed), best of N {worse_by * 100:+.1f} %", spo, spn
    rels = [x["rel"] for x in (spo, spn) if x and x["rel"] is not None]
    if not rels:
        return False, "not judged: one repeat on each side, no spread to judge by", spo, spn
    limit = max(SLOWER, max(rels))
    return (worse_by > limit, f"best of N worse by {worse_by * 100:+.1f} % vs limit {limit * 100:.0f} % "
                              f"(max(10 %, the runs' spread))", spo, spn)


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
            if kind.startswith(("slower", "throughput")):
                reg, how, spo, spn = _judge_noisy(kind, ob[name], nb[name], fig, fo[fig], fn[fig])
                changes.append(Change(name, fig, fo[fig], fn[fig], kind, bool(reg), spo, spn, how))
            else:
                changes.append(Change(name, fig, fo[fig], fn[fig], kind, bool(test(fo[fig], fn[fig])),
                                      decided="fixed rule (a deterministic figure)"))
    return changes, sorted(set(ob) - set(nb)), sorted(set(nb) - set(ob))


def spread_text(sp: dict | None) -> str:
    if not sp:
        return "n=1"
    rel = f", ±{sp['rel'] * 50:.0f} %" if sp.get("rel") is not None else ""
    return f"n={sp['n']} {sp['min']:.4g}..{sp['max']:.4g}{rel}"


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
