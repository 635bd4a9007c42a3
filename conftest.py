"""Root conftest: makes the checkout importable and registers quantgate's pytest plugins."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Plugins: fixtures and command-line options (--checkpoint/--source/--comfy-url/...) of the gates.
pytest_plugins = ["harness.pytest_options", "harness.pytest_render", "harness.pytest_format"]
