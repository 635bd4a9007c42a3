"""Root conftest: makes the checkout importable and registers quantgate's pytest plugins."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The gate plugins (options --checkpoint/--source/--comfy-url/..., fixtures) are loaded with -p in
# pyproject's addopts, so they also work when the paths given are outside the checkout.
