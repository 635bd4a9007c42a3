"""The kernel backend seam: one API, several implementations, chosen per call.

A backend is an object with ``name``, ``priority`` (higher wins when available), ``available(device)``
and ``ops``: for each op it implements (quant.kernels.registry lists them), what it accepts (a
:class:`~quant.kernels.registry.Needs`: device types, dtypes, dimensions, size). ``eager`` (plain torch,
bit-exact with comfy-kitchen) implements every required op for any tensor and is always registered; fast
backends (``triton``) register with :func:`register`, implement what they do well, and must write the
same bytes (tests hold them to the eager backend). A call goes to the first backend that takes it
(automatic fallback: no backend falls back by hand).

    get_backend(device="cuda")          # the ops of a device: the best available backend first, then the rest
    with use_backend("eager"): ...      # force one (tests, bisecting a fast kernel)
"""
from __future__ import annotations

import contextlib
import contextvars

from ..errors import UsageError
from .registry import ASYNC_OPS, OPS, Kernels, Needs, NoKernel, check_backend

_BACKENDS: dict[str, object] = {}
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("quant_kernel_backend", default=None)


_KERNELS: dict[tuple, Kernels] = {}     # get_backend's answers, per (name, device, registered backends)


def register(backend) -> object:
    """Add a backend (an object or a class, instantiated once). Returns it, so it works as a decorator."""
    obj = backend() if isinstance(backend, type) else backend
    check_backend(obj)
    _BACKENDS[obj.name] = obj
    _KERNELS.clear()
    return backend


def _builtin() -> None:
    """Register the eager backend on first use (importing it imports torch: light commands never do)."""
    if "eager" not in _BACKENDS:
        from .eager import EagerBackend
        from .triton_backend import TritonBackend
        register(EagerBackend)
        register(TritonBackend)     # CUDA (sm_89+) with triton; imports triton only when asked about a GPU


def __getattr__(name):
    if name == "EagerBackend":
        from .eager import EagerBackend
        return EagerBackend
    if name == "TritonBackend":
        from .triton_backend import TritonBackend
        return TritonBackend
    raise AttributeError(name)


def names() -> list[str]:
    _builtin()
    return sorted(_BACKENDS, key=lambda n: -getattr(_BACKENDS[n], "priority", 0))


def _chain(first, dev: str) -> Kernels:
    """``first``, then every lower-priority backend available on ``dev`` (the fallbacks)."""
    rest = [_BACKENDS[n] for n in names() if _BACKENDS[n] is not first
            and getattr(_BACKENDS[n], "priority", 0) <= getattr(first, "priority", 0) and _BACKENDS[n].available(dev)]
    return Kernels([first, *rest])


def get_backend(device="cpu", name: str | None = None) -> Kernels:
    """The kernels to use on ``device``: backend ``name`` if given (or forced by :func:`use_backend`),
    else the available one with the highest priority; calls it does not take go to the next one."""
    _builtin()
    name = name or _FORCED.get()
    dev = str(device)
    key = (name, dev, tuple(map(id, _BACKENDS.values())))      # the registered set is part of the answer
    got = _KERNELS.get(key)
    if got is None:
        if len(_KERNELS) > 256:
            _KERNELS.clear()
        got = _KERNELS[key] = _kernels_for(name, dev)
    return got


def _kernels_for(name: str | None, dev: str) -> Kernels:
    if name is not None:
        b = _BACKENDS.get(name)
        if b is None:
            raise UsageError(f"unknown kernel backend {name!r}; available: {', '.join(names())}")
        if not b.available(dev):
            raise UsageError(f"kernel backend {name!r} is not available on {dev}")
        return _chain(b, dev)
    for n in names():
        if _BACKENDS[n].available(dev):
            return _chain(_BACKENDS[n], dev)
    raise UsageError(f"no kernel backend available on {dev}")   # pragma: no cover - eager always is


@contextlib.contextmanager
def use_backend(name: str):
    """Force backend ``name`` inside the block (raises UsageError for an unknown name); yields the
    backend object."""
    _builtin()
    if name not in _BACKENDS:
        raise UsageError(f"unknown kernel backend {name!r}; available: {', '.join(names())}")
    tok = _FORCED.set(name)
    try:
        yield _BACKENDS[name]
    finally:
        _FORCED.reset(tok)


__all__ = ["register", "get_backend", "use_backend", "names", "Kernels", "Needs", "NoKernel", "OPS", "ASYNC_OPS", "EagerBackend",
           "TritonBackend"]
