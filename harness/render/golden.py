"""Old name of :mod:`harness.render.fingerprints` (golden render fingerprints); the same module object."""
import sys

from harness.render import fingerprints as _fingerprints

sys.modules[__name__] = _fingerprints
