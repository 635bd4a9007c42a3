"""Old name of :mod:`harness.planted.render_defects`; the same module object."""
import sys

from harness.planted import render_defects as _render_defects

sys.modules[__name__] = _render_defects
