"""Compatibility name: the parsed checkpoint declaration is :mod:`quant.checkpoint`."""
from quant.checkpoint import *  # noqa: F401,F403
from quant.checkpoint import IGNORED_KEYS, LEGACY_SUFFIXES, QUANT_STORAGE, SCALE_SUFFIXES  # noqa: F401
