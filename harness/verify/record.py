"""Gate record: a JSON file a release pipeline can archive next to the checkpoint."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path

from quant import __version__
from quant.errors import QuantgateError


def sha256_file(path, bufsize: int = 8 << 20) -> str:
    """sha256 of one file, streamed (the key of gate records and render reports)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(bufsize)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def sha256_path(path) -> dict:
    """sha256 of a file, or of every file of an index/shard dir (streamed, 8 MiB at a time)."""
    p = Path(path)
    files = [p] if p.is_file() and not p.name.endswith(".json") else None
    if files is None:
        from quant.sources import open_source
        with open_source(p) as s:
            files = [Path(x) for x in s.files]
    return {str(fp): sha256_file(fp) for fp in files}


def make_record(report, *, hash_files: bool = True) -> dict:
    rec = {
        "tool": "quantgate", "tool_version": __version__, "record_version": 1,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": report.checkpoint},
        "source": None if report.source is None else {"path": report.source},
        "reference": report.reference,
        **{k: v for k, v in report.as_dict().items() if k not in ("checkpoint", "source", "reference")},
    }
    for key, path in (("checkpoint", report.checkpoint), ("source", report.source)):
        if path is None:
            continue
        rec[key]["bytes"] = _size(path)
        if hash_files:
            digests = sha256_path(path)
            rec[key]["sha256"] = next(iter(digests.values())) if len(digests) == 1 else digests
    return rec


def _size(path) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in (p.parent if p.is_file() else p).glob("*.safetensors"))


def record_inputs(rec: dict) -> list[str]:
    """Every file a record describes (never to be overwritten by the record itself)."""
    out = []
    for key in ("checkpoint", "source"):
        e = rec.get(key) or {}
        if e.get("path"):
            out.append(e["path"])
        if isinstance(e.get("sha256"), dict):
            out += list(e["sha256"])
    if rec.get("reference"):
        out.append(rec["reference"])
    return out


def check_record_path(path, inputs) -> None:
    """Before any work: refuse a --record path that is an input (or one of its shards) or a special file."""
    from quant.outputs import check_output
    files = list(inputs)
    for i in inputs:
        if i is None:
            continue
        p = Path(i)
        if p.is_dir() or p.name.endswith(".json"):
            try:
                from quant.sources import open_source
                with open_source(p) as s:
                    files += s.files
            except Exception:
                pass
    check_output(path, files, overwrite=True, what="record")


def write_record(rec: dict, path, inputs=()) -> None:
    from quant.outputs import write_text
    write_text(path, json.dumps(rec, indent=1) + "\n", [*inputs, *record_inputs(rec)], what="record")

def run_verify(ckpt, source=None, calibration=None) -> dict:
    """The format gate (``harness.verify.verify``) as a plain dict for the render gate's record:
    ``{"available", "passed", "summary", "findings", "min_comfy"}``."""
    try:
        from harness.verify import verify
    except ImportError:
        return {"available": False, "passed": None, "summary": "verify: not available", "findings": []}
    try:
        kw = {"calibration": calibration} if calibration is not None else {}
        rep = verify(str(ckpt), source=str(source) if source else None, **kw)
    except QuantgateError as e:
        return {"available": True, "passed": False, "summary": str(e), "findings": [str(e)]}
    except Exception as e:          # the render gate still renders; the record says verify broke
        return {"available": True, "passed": None, "summary": f"verify crashed: {type(e).__name__}: {e}"[:300],
                "findings": []}
    passed = getattr(rep, "passed", None)
    try:
        lines = list(rep.lines())
    except Exception:
        lines = []
    summary = rep.summary_line() if hasattr(rep, "summary_line") else ("pass" if passed else "fail")
    findings = [ln for ln in lines if ln != summary]
    return {"available": True, "passed": passed, "summary": summary, "findings": findings,
            "min_comfy": getattr(rep, "min_comfy", None)}
