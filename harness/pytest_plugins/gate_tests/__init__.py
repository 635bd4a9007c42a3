"""The gate's tests, shipped in the package so an installed quantgate can run them on any file from any
directory: ``pytest -m format --checkpoint CKPT [...]`` / ``pytest -m render --checkpoint CKPT --source SRC``
(the ``harness.pytest_plugins.options`` plugin adds this folder to the collection when ``--checkpoint`` is given
and no test paths are). In quantgate's checkout they are collected through ``testpaths``."""
