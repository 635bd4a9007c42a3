"""The format gate as pytest tests, one per rule group (`pytest -m format --checkpoint CKPT ...`).

Without --checkpoint they check a demo checkpoint built on the fly (see harness/pytest_plugins/format.py)."""
from __future__ import annotations

import pytest

from harness.pytest_plugins.format import GROUPS

pytestmark = pytest.mark.format


@pytest.mark.parametrize("group", GROUPS)
def test_format(group, format_report):
    format_report.assert_group(group)


def test_format_checked_something(format_report):
    """Never vacuous: the checked file has quantized layers, or the run says why not."""
    if format_report.error:
        pytest.fail(f"checkpoint unreadable: {format_report.error}", pytrace=False)
    rep = format_report.report
    assert rep.tensors > 0
    if format_report.demo:
        assert rep.mode == "numeric" and rep.layers.get("fp8", 0) > 0
