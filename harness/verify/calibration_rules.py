"""``verify --calibration``: each layer's activation scale against the calibrated one.

The effective static activation scale of a layer is what the native kernel uses: its
``input_scale`` (``scale_input`` in legacy files), or 1.0 for an fp8 layer that has neither an
input_scale nor full_precision_matrix_mult (ComfyUI >= 0.4 casts at unit scale). NVFP4 layers
without input_scale take a dynamic scale (nothing to compare); layers with
full_precision_matrix_mult never quantize activations (their input_scale is unused).
The calibrated scale is the calibration's amax / the format's full scale (quant.formats).

* too small (error): the clip level input_scale x full scale lies below the calibration's p99.9
  of |x| (more than 1 in 1000 activations would clip; the 2 % slack is the histogram's resolution);
  without a recorded p99.9, a ratio below 1/FAR. Weight-derived scales are typically 8-65x small.
* too large (error): more than FAR x the calibrated amax scale: 3 binades of the e4m3 range stay
  unused and small activations fall into subnormals or to zero (the fp8 default 1.0 against
  activations of amax ~10-400).
"""
from __future__ import annotations

from quant import formats

from .findings import Findings
from quant.checkpoint import Structure

FAR = 8.0
CLIP_PERCENTILE = "p99.9"
SLACK = 0.98


def run(st: Structure, f: Findings, cal, scalars: dict[str, dict[str, float]]) -> dict:
    """Adds findings; returns {"far": FAR, "layers": {layer: {...}}} for the JSON report."""
    rows, missing = {}, []
    for la in st.declared:
        if la.spec is None or not la.spec.static_input_scale:
            continue
        key = la.spec.input_scale_key
        v = scalars.get(la.name, {}).get(key)
        stat = cal.layer(la.name)
        if stat is None:
            missing.append(la.name)
            continue
        fmt = la.spec.name
        full = formats.get(fmt).full_scale
        calibrated = float(stat["amax"]) / full
        row = {"format": fmt, "calibrated_amax": stat["amax"], "calibrated_scale": calibrated,
               "input_scale": v, "full_precision_matrix_mult": la.fpmm}
        if la.fpmm:
            row["effective"] = "weight-only (full_precision_matrix_mult)"
            rows[la.name] = row
            continue
        if v is None:
            if la.spec.dynamic_without_input_scale:
                row["effective"] = "dynamic (amax/(448*6) per call)"
                rows[la.name] = row
                continue
            v, row["effective"] = 1.0, "unit scale 1.0 (no input_scale, no full_precision_matrix_mult)"
        else:
            row["effective"] = "static input_scale"
        ratio = v / calibrated if calibrated > 0 else float("inf")
        row["ratio"] = ratio
        clip = v * full
        row["clip_level"] = clip
        p = stat.get(CLIP_PERCENTILE)
        rows[la.name] = row
        row["ok"] = not ((p is not None and clip < p * SLACK) or (p is None and ratio < 1 / FAR) or ratio > FAR)
        if (p is not None and clip < p * SLACK) or (p is None and ratio < 1 / FAR):
            f.error("input_scale.calibration", "activation scale too SMALL: input_scale x full scale lies below the "
                                               f"calibrated {CLIP_PERCENTILE} of |x| (more than 1 in 1000 activations "
                                               "clip; input_scale taken from weights?)", [la.name])
        elif ratio > FAR:
            what = "an fp8 layer without input_scale runs at unit scale 1.0" if row["effective"].startswith("unit") \
                else "input_scale"
            f.error("input_scale.calibration", f"activation scale more than {FAR:g}x LARGER than calibrated "
                                               f"({what}): small activations lose precision or flush to zero",
                    [la.name])
    # the calibration knows the activation range: the header-only guess "input_scale implies |x| < 0.5,
    # too small" (value_rules) does not apply to layers whose scale the calibration confirms
    confirmed = [n for n, r in rows.items() if r.get("ok")]
    dropped = f.drop("input_scale.implausible", confirmed, severity="error")
    if dropped:
        f.info("input_scale.calibration", "the calibration confirms {n} input scales that look implausible without it "
                                          "(its activations really are that small)", dropped)
    if missing:
        f.warning("input_scale.calibration", "the calibration has no statistics for {n} quantized layers "
                                             "(recorded on another model?)", missing)
    ratios = [r["ratio"] for r in rows.values() if "ratio" in r]
    return {"path": cal.path, "far": FAR, "clip_percentile": CLIP_PERCENTILE, "layers": rows,
            "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None}


def provenance(st: Structure, f: Findings, cal, source=None) -> dict:
    """Was the calibration recorded on this model? With ``source``: its provenance model sha256 must be the
    source file's (an error otherwise, naming both); without: it must match the model the file itself was
    calibrated on (``quantgate.calibration`` metadata that convert writes), when the file says."""
    from quant.activations import statistics as _cal
    from quant.inputs import file_calibration_record
    want = _cal.model_sha256(cal)
    out = {"model_sha256": want}
    if want is None:
        f.warning("calibration.foreign", "the calibration records no model sha256: whether it was recorded on this "
                                         "model cannot be checked")
        return out
    if source is not None:
        fr = _cal.foreign(cal, source)
        out["foreign"] = fr is not None
        if fr is not None:
            f.error("calibration.foreign", f"the calibration was recorded on another model: its model sha256 {fr[0]} "
                                           f"is not the source's {fr[1]}")
        return out
    got = (file_calibration_record(st.metadata, "the file") or {}).get("model_sha256")
    if got is not None and got != want:
        out["foreign"] = True
        f.error("calibration.foreign", f"the calibration was recorded on another model ({want}) than the one this "
                                       f"file was calibrated on ({got}, its quantgate.calibration metadata)")
    return out


def file_provenance(st: Structure, f: Findings, source) -> dict | None:
    """Were the file's own input scales calibrated on ``source``? ``convert --act-stats`` records the model
    the statistics were recorded on (``quantgate.calibration`` metadata: ``model_sha256``); when that is not
    the source's sha256 the scales belong to another model -- e.g. WAN 2.2 A14B's other expert, whose layers
    have the same names and shapes (an error naming both). Files without that record: None (nothing to check)."""
    from pathlib import Path

    from quant.activations import statistics as _cal
    from quant.inputs import file_calibration_record
    got = (file_calibration_record(st.metadata, source) or {}).get("model_sha256")
    p = Path(source)
    if got is None or not p.is_file() or p.suffix.lower() == ".json":
        return None
    src_sha = _cal.file_sha256(p)
    out = {"calibrated_on_sha256": got, "source_sha256": src_sha, "foreign": got != src_sha}
    if out["foreign"]:
        f.error("calibration.foreign", f"the file's input scales were calibrated on another model (sha256 "
                                       f"{got}, its quantgate.calibration metadata), not on the source "
                                       f"{p.name} (sha256 {src_sha})")
    return out
