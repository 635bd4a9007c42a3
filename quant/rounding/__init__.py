"""Rounding strategies: how a sequence of layer jobs becomes quantized tensors.

A strategy has ``name`` and ``quantize(jobs, *, backend, device) -> iterator of (job, raw)`` where
``raw`` is the format's ``quantize`` output ({suffix: tensor}); it must yield every job once, in order,
and may look at several layers at a time (batched GPU work, calibration-driven rounding). ``rtn``
(round-to-nearest-even, bit-exact with comfy-kitchen) is the default; ``learned`` (strategy.py, learned.py,
engine.py) picks each weight's grid neighbour to minimise the layer's output error.
"""
from __future__ import annotations

from ..errors import UsageError
from .rtn import RoundToNearest
from .strategy import Learned

_STRATEGIES: dict[str, object] = {}
DEFAULT = "rtn"


def register(strategy):
    obj = strategy() if isinstance(strategy, type) else strategy
    if not getattr(obj, "name", None) or not callable(getattr(obj, "quantize", None)):
        raise TypeError(f"rounding strategy {obj!r} needs a name and quantize(jobs, backend=..., device=...)")
    _STRATEGIES[obj.name] = obj
    return strategy


def names() -> list[str]:
    return sorted(_STRATEGIES)


def get(name=None):
    """A registered strategy by name, or a configured strategy object passed through as is."""
    if name is not None and not isinstance(name, str):
        return name
    name = name or DEFAULT
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise UsageError(f"unknown rounding {name!r}; choose one of {', '.join(names())}") from None


register(RoundToNearest)
register(Learned)

__all__ = ["register", "get", "names", "DEFAULT", "RoundToNearest", "Learned"]
