"""Gate record: a JSON file a release pipeline can archive next to the checkpoint."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path

from quant import __version__


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


def write_record(rec: dict, path) -> None:
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    os.replace(tmp, p)
