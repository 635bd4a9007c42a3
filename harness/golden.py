"""Old name of :mod:`harness.manifests` (golden layout manifests); the same module object."""
import sys

from harness import manifests as _manifests

sys.modules[__name__] = _manifests
