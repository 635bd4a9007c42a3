"""Why a layer failed the numeric check: a wrong scale factor, or one of the usual mistakes
(re-decoded by comfy-kitchen the mistaken way; the one that then fits the source is the diagnosis)."""
from __future__ import annotations

import math

from .metrics import metrics, within


def diagnose(ck, ref_impl, la, w, scale, bs, n, k, ref, alpha, cos) -> str:
    spec = la.spec
    if cos >= spec.min_cosine and math.isfinite(alpha) and alpha > 0:
        if abs(math.log(alpha)) > math.log(1.5):
            extra = " (inverted scale?)" if alpha > 1e3 or alpha < 1e-3 else ""
            return (f"values are right up to a factor ~{alpha:.3g}: the scale is wrong{extra}")
    for why, fn in ref_impl.mistakes(ck, w, scale, bs, n, k):
        try:
            r, cs, _ = metrics(ref, fn())
        except Exception:       # a diagnosis attempt must never break the report
            continue
        if within(spec, r, cs):
            return why
    return "the dequantized weight does not match the source"
