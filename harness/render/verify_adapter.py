"""Calls the format gate (``harness.verify.verify``) if it is installed, as a plain dict for the
render gate's record: ``{"available", "passed", "summary", "findings", "min_comfy"}``."""
from __future__ import annotations

from quant.errors import QuantgateError


def run_verify(ckpt, source=None, calibration=None) -> dict:
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
