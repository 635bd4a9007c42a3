"""Issue 21: a calibration recorded on ANOTHER model (its provenance model sha256 is not the source's) is
refused by `convert --calibration` (exit 2, one line naming both sha256s, no output) unless
--allow-foreign-calibration, and `verify --calibration` reports it as an error."""
import json

import pytest

from quant.activations import statistics as calibration
from quant.convert import convert, make_plan
from quant.sources import open_source
from tests._inproc import one_error_line, run_main


def _calibration(src, path, sha):
    with open_source(src) as s:
        layers = [(d.layer, int(d.shape[1])) for d in make_plan(s, None, "fp8").quantized()]
    obj = {"schema": calibration.SCHEMA, "percentiles": [99.9],
           "provenance": {"model": {"name": src.name, "sha256": sha}, "seeds": [101, 102]},
           "layers": {L: {"amax": 4.0 + i / 10, "p99.9": 3.0, "in_features": k} for i, (L, k) in enumerate(layers)}}
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="module")
def cals(thin_source, tmp_path_factory):
    d = tmp_path_factory.mktemp("prov")
    own = calibration.file_sha256(thin_source)
    other = "ab" * 32
    return d, own, other, _calibration(thin_source, d / "own.json", own), _calibration(thin_source, d / "other.json", other)


def test_convert_refuses_a_foreign_calibration_naming_both_sha256s(thin_source, cals):
    d, own, other, _, foreign = cals
    out = d / "refused.safetensors"
    rc, _, err = run_main("convert", thin_source, "-f", "fp8", "--act-stats", foreign, "-o", out)
    line = one_error_line(rc, err)
    assert rc == 2 and own in line and other in line and "--allow-foreign-calibration" in line
    assert not out.exists()


def test_allow_foreign_calibration_forces_it_and_records_it(thin_source, cals):
    d, own, other, _, foreign = cals
    out = d / "forced.safetensors"
    rc, _, err = run_main("convert", thin_source, "-f", "fp8", "--act-stats", foreign,
                          "--allow-foreign-calibration", "-o", out)
    assert rc == 0, err
    from quant.safetensors_io import read_header
    meta = json.loads(read_header(out).metadata["quantgate.calibration"])
    assert meta["model_sha256"] == other and meta["foreign_to_source_sha256"] == own


def test_own_calibration_converts_and_verifies_clean(thin_source, cals):
    from harness.verify import verify
    d, own, _, mine, _ = cals
    out = d / "own.safetensors"
    convert(thin_source, out, "fp8", act_stats=mine, force=True)
    rep = verify(out, thin_source, calibration=mine, header_only=True)
    assert "calibration.foreign" not in {f.rule for f in rep.findings.all()}, rep.lines()


def test_verify_calibration_reports_a_foreign_calibration_as_an_error(thin_source, cals):
    from harness.verify import verify
    d, own, other, mine, foreign = cals
    out = d / "for-verify.safetensors"
    convert(thin_source, out, "fp8", act_stats=mine, force=True)

    def errors(rep):
        return [f for f in rep.findings.all() if f.rule == "calibration.foreign" and f.severity == "error"]
    rep = verify(out, thin_source, calibration=foreign, header_only=True)        # against the source file
    assert not rep.passed and errors(rep) and own in errors(rep)[0].message and other in errors(rep)[0].message
    rep = verify(out, calibration=foreign, header_only=True)                     # against the file's own metadata
    assert not rep.passed and errors(rep)


def test_verify_with_source_fails_a_file_calibrated_on_another_model(thin_source, cals):
    """Without --calibration: the file's own quantgate.calibration record (model_sha256) is checked against
    the --source file (issue 23: WAN 2.2 A14B's expert converted with the other expert's statistics has
    the same names and shapes, and its render may not show it). A file calibrated on its source: clean."""
    from harness.verify import verify
    d, own, other, mine, foreign = cals
    bad = d / "forced-for-verify.safetensors"
    convert(thin_source, bad, "fp8", act_stats=foreign, allow_foreign_calibration=True, force=True)
    rep = verify(bad, thin_source, header_only=True)
    errs = [f for f in rep.findings.all() if f.rule == "calibration.foreign" and f.severity == "error"]
    assert not rep.passed and errs and own in errs[0].message and other in errs[0].message
    assert rep.calibration["file_provenance"] == {"calibrated_on_sha256": other, "source_sha256": own, "foreign": True}
    good = d / "own-for-verify.safetensors"
    convert(thin_source, good, "fp8", act_stats=mine, force=True)
    rep = verify(good, thin_source, header_only=True)
    assert "calibration.foreign" not in {f.rule for f in rep.findings.all()}, rep.lines()
    assert rep.calibration["file_provenance"]["foreign"] is False


def test_hostile_calibration_metadata_is_no_provenance_not_a_traceback(tmp_path, thin_source):
    """The render gate's and verify's provenance read of the candidate's own metadata (anyone's): nesting past
    Python's recursion limit, NaN, not JSON -- no provenance, no crash; a well-formed one is read."""
    import torch

    from harness.render import gate
    from harness.verify import verify
    from quant.safetensors_io import save_file
    t = {"a.weight": torch.zeros(4, 4)}
    for i, text in enumerate(["[" * 100_000 + "]" * 100_000, '{"model_sha256": NaN}', "not json"]):
        p = tmp_path / f"h{i}.safetensors"
        save_file(t, p, {"quantgate.calibration": text})
        assert gate.calibrated_on(p) is None, text[:20]
        rep = verify(p, thin_source, header_only=True)
        assert "calibration.foreign" not in {f.rule for f in rep.findings.all()}
    p = tmp_path / "ok.safetensors"
    save_file(t, p, {"quantgate.calibration": '{"model_sha256": "' + "Ab" * 32 + '"}'})
    assert gate.calibrated_on(p) == "ab" * 32
