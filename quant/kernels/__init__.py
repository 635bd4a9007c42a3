"""The kernel backend seam: one API, several implementations.

A backend is an object with ``name``, ``priority`` (higher wins when available), ``available(device)``
and the ops ``quantize_fp8(w) -> (q_e4m3, scale_f32_0d)``, ``quantize_nvfp4(w, global_scale=None) ->
(packed_u8, swizzled_block_scales_e4m3, s2_f32_0d)``, ``dequantize_fp8(q, scale, dtype)`` and
``dequantize_nvfp4(packed, scales, s2, n, k, dtype)``. ``eager`` (plain torch, bit-exact with
comfy-kitchen) is always registered; fast CUDA/Triton backends register themselves with
:func:`register` and must write the same bytes (tests hold them to the eager backend).

    get_backend(device="cuda")          # the best available backend for a device
    with use_backend("eager"): ...      # force one (tests, bisecting a fast kernel)
"""
from __future__ import annotations

import contextlib
import contextvars

from ..errors import UsageError

_BACKENDS: dict[str, object] = {}
_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("quant_kernel_backend", default=None)

OPS = ("quantize_fp8", "quantize_nvfp4", "dequantize_fp8", "dequantize_nvfp4", "available")


def register(backend) -> object:
    """Add a backend (an object or a class, instantiated once). Returns it, so it works as a decorator."""
    obj = backend() if isinstance(backend, type) else backend
    missing = [op for op in OPS if not callable(getattr(obj, op, None))]
    if missing or not getattr(obj, "name", None):
        raise TypeError(f"kernel backend {obj!r} lacks {', '.join(missing) or 'a name'}")
    _BACKENDS[obj.name] = obj
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


def get_backend(device="cpu", name: str | None = None):
    """The backend to use on ``device``: ``name`` if given (or forced by :func:`use_backend`),
    else the available one with the highest priority."""
    _builtin()
    name = name or _FORCED.get()
    dev = str(device)
    if name is not None:
        b = _BACKENDS.get(name)
        if b is None:
            raise UsageError(f"unknown kernel backend {name!r}; available: {', '.join(names())}")
        if not b.available(dev):
            raise UsageError(f"kernel backend {name!r} is not available on {dev}")
        return b
    for n in names():
        if _BACKENDS[n].available(dev):
            return _BACKENDS[n]
    raise UsageError(f"no kernel backend available on {dev}")   # pragma: no cover - eager always is


@contextlib.contextmanager
def use_backend(name: str):
    """Force backend ``name`` inside the block (raises UsageError for an unknown name)."""
    _builtin()
    if name not in _BACKENDS:
        raise UsageError(f"unknown kernel backend {name!r}; available: {', '.join(names())}")
    tok = _FORCED.set(name)
    try:
        yield _BACKENDS[name]
    finally:
        _FORCED.reset(tok)


__all__ = ["register", "get_backend", "use_backend", "names", "EagerBackend", "TritonBackend"]
