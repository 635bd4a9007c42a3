"""The render gate on several ComfyUI versions: one gate run per server, one summary.

A file can pass on a current ComfyUI and fail on an older one (the KJ recipe's high-precision Linears on
ComfyUI < 0.4, NVFP4 before 0.8). The matrix answers "from which version on does this file render right":
each version gets its own full gate report (``<out>/comfyui-<version>/``), and ``<out>/report.html`` +
``<out>/gate.json`` hold the verdict per version and the oldest version every candidate passes on.
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

from quant.errors import UsageError

EMBEDDED = "embedded"
UPSTREAM = "upstream"


@dataclass(frozen=True)
class Target:
    """One ComfyUI to render on: ``root`` None = the embedded one."""
    label: str
    root: str | None
    python: str | None


def upstream_checkout() -> tuple[str, str | None]:
    """The current upstream ComfyUI tree beside the checkout (``../shared/comfyui``) and its venv's Python,
    as ``./qg`` sets them up (QUANTGATE_UPSTREAM_COMFY / QUANTGATE_UPSTREAM_PYTHON)."""
    root = os.environ.get("QUANTGATE_UPSTREAM_COMFY")
    if not root:
        guess = Path(__file__).resolve().parents[2].parent / "shared" / "comfyui" / "ComfyUI"
        root = str(guess) if (guess / "main.py").is_file() else None
    if not root:
        raise UsageError("--comfy-root upstream: no upstream ComfyUI found (set QUANTGATE_UPSTREAM_COMFY, or run "
                         "./qg with ../shared/comfyui beside the checkout)")
    py = os.environ.get("QUANTGATE_UPSTREAM_PYTHON") or None
    if py and not Path(py).is_file():
        raise UsageError(f"--comfy-root upstream: its Python {py} does not exist (run ./qg setup)")
    from harness.comfy.server import check_comfy_root, prepare_copy
    return str(prepare_copy(check_comfy_root(root), "-upstream", what="upstream")), py


def targets(roots: list[str] | None, pythons: list[str] | None) -> list[Target]:
    """``--comfy-root`` values (paths, ``embedded``, ``upstream``) paired with ``--comfy-python`` by position.

    One ``--comfy-python`` with one path root is the single-server case; with several roots, give one
    ``--comfy-python`` per path root in the same order (``embedded``/``upstream`` bring their own)."""
    roots = list(roots or [EMBEDDED])
    pythons = list(pythons or [])
    paths = [r for r in roots if r not in (EMBEDDED, UPSTREAM)]
    if pythons and len(pythons) != len(paths):
        raise UsageError(f"{len(pythons)} --comfy-python for {len(paths)} --comfy-root checkout(s): give one per "
                         "checkout, in the same order (embedded/upstream need none)")
    out, it = [], iter(pythons)
    for r in roots:
        if r == EMBEDDED:
            out.append(Target(EMBEDDED, None, None))
        elif r == UPSTREAM:
            root, py = upstream_checkout()
            out.append(Target(UPSTREAM, root, py))
        else:
            out.append(Target(r, r, next(it) if pythons else None))
    if len({(t.root, t.python) for t in out}) != len(out):
        raise UsageError("the same ComfyUI is named twice in --comfy-root")
    return out


def _vkey(v: str):
    from packaging.version import InvalidVersion, Version
    try:
        return (0, Version(v))
    except InvalidVersion:
        return (1, v)


def summarize(runs: list[dict]) -> dict:
    """``runs``: [{"target": label, "version": str, "record": gate record, "report": path}] ->
    the matrix record: verdict per version per candidate, oldest passing version."""
    rows = []
    for r in sorted(runs, key=lambda r: _vkey(r["version"])):
        rec = r["record"]
        rows.append({"target": r["target"], "comfyui_version": r["version"], "verdict": rec["verdict"],
                     "report": r["report"],
                     "candidates": [{"label": c["label"], "format": c["format"], "rendered_as": c["rendered_as"],
                                     "min_ssim": c["min_ssim"], "threshold": c["threshold"], "verdict": c["verdict"],
                                     "reasons": c["reasons"], "notes": c.get("notes", [])}
                                    for c in rec["candidates"]]})
    labels = [c["label"] for c in rows[0]["candidates"]] if rows else []
    oldest = {}
    for lab in labels:
        # the oldest version from which on the candidate passes on every newer version of the matrix
        passing = None
        for row in reversed(rows):
            c = next(c for c in row["candidates"] if c["label"] == lab)
            if c["verdict"] != "pass":
                break
            passing = row["comfyui_version"]
        oldest[lab] = passing
    first = runs[0]["record"] if runs else {}
    return {"schema": "quantgate.gate-matrix/1", "source": first.get("source"), "tool": first.get("tool"),
            "versions": rows, "oldest_passing": oldest,
            "verdict": "pass" if rows and all(r["verdict"] == "pass" for r in rows) else "fail"}


def _write_text(path: Path, text: str, inputs=()) -> None:
    from quant.outputs import write_text          # quantgate's one output path
    write_text(path, text, inputs)


def write(matrix: dict, out_dir) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gj, rp = out / "gate.json", out / "report.html"
    src = (matrix.get("source") or {}).get("path")
    _write_text(gj, json.dumps(matrix, indent=1) + "\n", [src])
    _write_text(rp, render_html(matrix), [src])
    return rp, gj


def render_html(m: dict) -> str:
    e = html.escape
    o = ["<!doctype html><html><head><meta charset='utf-8'><title>quantgate version matrix</title><style>"
         "body{font:14px system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
         "padding:4px 8px;text-align:left}.pass{color:#070;font-weight:bold}.fail{color:#b00;font-weight:bold}"
         ".muted{color:#666}</style></head><body>",
         f"<h1>Render gate on {len(m['versions'])} ComfyUI versions: "
         f"<span class='{m['verdict']}'>{m['verdict'].upper()}</span></h1>"]
    if m.get("source"):
        o.append(f"<p class='muted'>source <code>{e(Path(m['source']['path']).name)}</code> sha256 "
                 f"<code>{e(m['source']['sha256'][:16])}…</code></p>")
    o.append("<table><tr><th>candidate</th>" + "".join(
        f"<th>ComfyUI {e(v['comfyui_version'])}<br><span class='muted'>{e(v['target'])}</span></th>"
        for v in m["versions"]) + "<th>passes from</th></tr>")
    for lab, old in m["oldest_passing"].items():
        cells = []
        for v in m["versions"]:
            c = next(c for c in v["candidates"] if c["label"] == lab)
            ss = "-" if c["min_ssim"] is None else f"{c['min_ssim']:.4f}"
            why = "<br>".join(e(x) for x in c["reasons"][:3])
            cells.append(f"<td><span class='{c['verdict']}'>{c['verdict'].upper()}</span> min SSIM {ss} "
                         f"(≥ {c['threshold']}) · {e(c['rendered_as'])}<div class='muted'>{why}</div></td>")
        o.append(f"<tr><td><code>{e(lab)}</code></td>{''.join(cells)}<td>{e(old or 'none of these')}</td></tr>")
    o.append("</table><h2>Reports per version</h2><ul>")
    for v in m["versions"]:
        rel = os.path.relpath(v["report"], start=Path(v["report"]).parents[1])
        o.append(f"<li><a href='{e(rel)}'>ComfyUI {e(v['comfyui_version'])} ({e(v['target'])})</a>: "
                 f"<span class='{v['verdict']}'>{v['verdict'].upper()}</span></li>")
    o.append("</ul></body></html>")
    return "\n".join(o)


def print_summary(m: dict, file=None) -> None:
    import sys
    file = file or sys.stdout
    vers = [v["comfyui_version"] for v in m["versions"]]
    rows = [("candidate", *[f"ComfyUI {v}" for v in vers], "passes from")]
    for lab, old in m["oldest_passing"].items():
        cells = []
        for v in m["versions"]:
            c = next(c for c in v["candidates"] if c["label"] == lab)
            cells.append(f"{c['verdict'].upper()} " + ("-" if c["min_ssim"] is None else f"{c['min_ssim']:.4f}"))
        rows.append((lab, *cells, old or "none of these"))
    w = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(str(x).ljust(w[j]) for j, x in enumerate(r)).rstrip(), file=file)
        if i == 0:
            print("  ".join("-" * n for n in w), file=file)
