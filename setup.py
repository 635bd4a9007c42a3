"""Build step: the wheel carries the top-level data folders (presets/, golden/) as quant/_data/<name>,
found at run time by quant.resources.data_path. Everything else is in pyproject.toml."""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("presets", "golden")      # = quant.resources.SHIPPED


class BuildPyWithData(build_py):
    def run(self):
        super().run()
        root = Path(__file__).resolve().parent
        for name in SHIPPED:
            dst = Path(self.build_lib) / "quant" / "_data" / name
            if dst.exists():
                shutil.rmtree(dst)
            shutil.copytree(root / name, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithData})
