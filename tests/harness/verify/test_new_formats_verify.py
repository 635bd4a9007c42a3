"""verify on the formats ComfyUI 0.33 ships beside fp8/nvfp4 (issue 24): converted files pass with every layer
decoded by comfy-kitchen; a destroyed file of EVERY format (old and new: weights negated, scales x10) fails; each
planted converter mistake is caught by the expected rule and, where the format allows, named."""
from __future__ import annotations

import pytest

from harness.fixtures.planted import format_defects as P
from harness.verify import verify
from quant.formats import TARGETS

NEW = ("int8", "int8-convrot", "mxfp8", "w4a4-convrot", "w4a8-int8")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return P.make_sources(tmp_path_factory.mktemp("newfmt"))


def _errors(rep) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for f in rep.findings.all():
        if f.severity == "error":
            out.setdefault(f.rule, []).append(f.message)
    return out


@pytest.mark.parametrize("fmt", NEW)
def test_converted_file_passes_with_every_layer_decoded(files, fmt):
    rep = verify(files[fmt], files["src"], strict=True)
    assert rep.passed, [f.line() for f in rep.findings.all()]
    cov = rep.coverage
    assert cov["declared"] > 0 and cov["unchecked"] == [] and cov["compared"] == cov["declared"], cov
    assert "NOT checked" not in rep.summary_line()


@pytest.mark.parametrize("fmt", TARGETS)
def test_destroyed_file_of_every_format_fails(files, fmt, tmp_path):
    t, m = P.load(files[fmt])
    t, m = P.destroyed(t, m)
    bad = P.save(t, m, tmp_path / f"destroyed-{fmt}.safetensors")
    rep = verify(bad, files["src"])
    assert not rep.passed and rep.exit_code == 1
    errs = _errors(rep)
    assert "numeric.mismatch" in errs, errs
    # every declared layer was compared (none skipped), and every one of them failed
    assert rep.coverage["unchecked"] == [] and rep.coverage["compared"] == rep.coverage["declared"]
    failed = {la for f in rep.findings.all() if f.rule == "numeric.mismatch" for la in f.layers}
    assert len(failed) == rep.coverage["declared"], (len(failed), rep.coverage)


@pytest.fixture(scope="module")
def planted(files, tmp_path_factory):
    d = tmp_path_factory.mktemp("planted-new")
    out = {}
    for name, (good, fn, *_r) in P.NEW_FORMAT_DEFECTS.items():
        t, m = P.load(files[good])
        t, m = fn(t, m)
        out[name] = P.save(t, m, d / (name.replace(" ", "_").replace(":", "").replace("/", "_") + ".safetensors"))
    return out


@pytest.mark.parametrize("name", list(P.NEW_FORMAT_DEFECTS))
def test_planted_defect_caught(name, planted, files):
    good, _fn, rule, words = P.NEW_FORMAT_DEFECTS[name]
    rep = verify(planted[name], files["src"])
    errs = _errors(rep)
    assert not rep.passed and rep.exit_code == 1, name
    hits = [msg for r, msgs in errs.items() if r.startswith(rule) for msg in msgs]
    assert hits, (name, errs)
    if words:
        assert any(words in msg for msg in hits), (name, hits)
    assert P.LAYER in {la for f in rep.findings.all() if f.severity == "error" for la in f.layers}


def test_wrong_group_size_declared_is_a_layout_error(files, tmp_path):
    """Without a source too: a group size kitchen cannot use is named from the header."""
    t, m = P.load(files["w4a8-int8"])
    t, m = P.w4a8_group_32(t, m)
    rep = verify(P.save(t, m, tmp_path / "g32.safetensors"), header_only=True)
    assert "conf.params" in _errors(rep)


def test_int8_and_int8_convrot_are_told_apart(files):
    from quant.checkpoint import build
    from quant.sources import open_source
    for fmt in ("int8", "int8-convrot"):
        with open_source(files[fmt]) as src:
            st = build(src)
            assert {la.spec.name for la in st.declared} == {fmt}
