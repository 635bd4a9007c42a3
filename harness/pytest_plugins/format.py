"""pytest plugin: the format gate as tests, one per rule group, so a failure reads as a diagnosis.

    pytest -m format --checkpoint CKPT [--source SRC] [--reference REF] [--strict-format]

Registered by -p in pyproject's addopts in the checkout and by the pytest11 entry point of an installed
quantgate; its tests are harness/pytest_plugins/gate_tests/test_format_gate.py. Without ``--checkpoint`` the
same tests run against a demo checkpoint built on the fly (a seeded thin Wan 2.2 model converted to fp8 by
quant.convert, checked numerically against its source) -- they never pass vacuously, and the report header says
which checkpoint was checked.
"""
from __future__ import annotations

import pytest

from harness.verify.findings import ERROR, INFO, RULES, WARNING, group_of

GROUPS = sorted({g for g, _ in RULES.values()})
_STATE: dict = {}


_OPTIONS = [
    (("--reference",), dict(default=None, metavar="REF",
                            help="format gate: golden manifest name or checkpoint to compare the layout with")),
    (("--strict-format",), dict(action="store_true", help="format gate: warnings fail the format tests too")),
]


def pytest_addoption(parser):
    g = parser.getgroup("quantgate format gate")
    for names, kw in _OPTIONS:
        g.addoption(*names, **kw)           # --checkpoint/--source: harness.pytest_plugins.options


def _target(config):
    ck = config.getoption("--checkpoint")
    if ck:
        return ck, config.getoption("--source"), config.getoption("--reference"), False
    if "demo" not in _STATE:
        import tempfile
        from pathlib import Path

        from harness.fixtures import synth
        from quant.convert import convert
        d = Path(tempfile.mkdtemp(prefix="qg-format-demo-"))
        src = synth.make_model("wan22-ti2v-5b-thin", d / "demo_bf16.safetensors", seed=0)
        out = d / "demo_fp8.safetensors"
        convert(src, out, "fp8")
        _STATE["demo"] = (str(out), str(src))
    out, src = _STATE["demo"]
    return out, src, config.getoption("--reference"), True


def pytest_report_header(config):
    if config.getoption("--checkpoint"):
        return [f"format gate: checkpoint {config.getoption('--checkpoint')}"
                + (f", source {config.getoption('--source')}" if config.getoption("--source") else ", no source")]
    return None


class FormatReport:
    def __init__(self, report=None, error: str | None = None, demo: bool = False, strict: bool = False):
        self.report, self.error, self.demo, self.strict = report, error, demo, strict

    def assert_group(self, group: str):
        if self.error:
            pytest.fail(f"checkpoint unreadable: {self.error}", pytrace=False)
        fails = [f for f in self.report.findings.all() if group_of(f.rule) == group
                 and (f.severity == ERROR or (self.strict and f.severity == WARNING))]
        notes = [f for f in self.report.findings.all() if group_of(f.rule) == group and f.severity != ERROR]
        for f in notes:
            if f.severity != INFO or self.report.findings.count(ERROR) == 0:
                print(f.line())
        if fails:
            head = f"{self.report.checkpoint}: {group}: {len(fails)} finding{'s' if len(fails) > 1 else ''}"
            pytest.fail("\n".join([head] + [f.line(max_layers=8) for f in fails]), pytrace=False)


@pytest.fixture(scope="session")
def format_report(request) -> FormatReport:
    if "report" not in _STATE:
        from harness.verify import verify
        from quant.errors import QuantgateError
        ck, src, ref, demo = _target(request.config)
        strict = request.config.getoption("--strict-format")
        try:
            rep = verify(ck, src, ref)
            _STATE["report"] = FormatReport(rep, demo=demo, strict=strict)
        except QuantgateError as e:
            _STATE["report"] = FormatReport(error=str(e), demo=demo, strict=strict)
    return _STATE["report"]
