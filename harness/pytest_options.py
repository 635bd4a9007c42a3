"""Command-line options shared by the format- and render-gate pytest plugins (defined once here)."""


def pytest_addoption(parser):
    g = parser.getgroup("quantgate gates")
    g.addoption("--checkpoint", action="store", default=None, metavar="CKPT",
                help="checkpoint to check (pytest -m format / -m render): file, index.json or shard dir")
    g.addoption("--source", action="store", default=None, metavar="SRC",
                help="unquantized source checkpoint it was made from")
