"""The kernel registry: backends registered by function, each function with what it accepts, and
automatic fallback.

A backend declares, per op it implements, a :class:`Needs` (device types, input dtypes, dimensions, size,
output dtypes). :func:`kernels_for` gives the :class:`Kernels` of a device: the chosen backend first, then
every lower-priority backend available there. Each call goes to the first backend in that chain whose
``Needs`` accept the arguments -- so a fast backend implements only what it does well (and only for the
tensors it takes), and ``eager`` (every op, any tensor) serves the rest. Nothing in a backend falls back
by hand.

Ops (the first argument is the tensor the needs are checked on; dequantize ops also check ``dtype``):

    quantize_fp8(w, scale=None, *, name, check_finite)        -> (q e4m3, scale f32 0-d)
    quantize_nvfp4(w, global_scale=None, *, name)              -> (packed u8, swizzled e4m3 scales, s2)
    dequantize_fp8(q, scale, dtype)                            -> tensor
    dequantize_nvfp4(packed, scales, s2, n, k, dtype)          -> tensor
    quantize_int8_rowwise(w, *, name, check_finite)            -> (q i8, scale [N, 1])        optional
    quantize_mxfp8(w, *, name, check_finite)                   -> (q e4m3 padded, swizzled E8M0 u8) optional
    quantize_w4a4_convrot(w, group, *, name, check_finite)     -> (packed i8 [N, K/2], scale [N])  optional
    quantize_int8_convrot(w, group, *, name, check_finite)     -> (q i8 of the rotated w, scale [N, 1]) optional
    quantize_w4a8_rotated(r, codebook, *, name, check_finite)  -> (packed i8 [N, K/2], s_rel e4m3 [N, K/16],
                                                                  s_channel f32 [N])                optional
    quantize_fp8_async(x, scale=None)                          -> (q, scale, amax)            optional
    quantize_nvfp4_async(x, global_scale=None)                 -> (packed, scales, s2, amax)  optional
    quantize_int8_rows_async(x)                                -> (q, scale, amax)            optional
    quantize_mxfp8_async(x)                                    -> (q, scales, amax)           optional
    quantize_int8_convrot_async(x, group)                      -> (q, scale, amax)            optional
    quantize_w4a4_convrot_async(x, group)                      -> (packed, scale, amax)       optional

``check_finite``: "deferred" (the default) never waits for the device -- inf/NaN input raises at the latest at
:meth:`Kernels.flush` (a backend that checks at once, like eager, raises at the call); "sync" raises at the call.
The ``*_async`` ops never wait for the device: the amax they return is checked for finiteness later (the
pipelined converter). An optional op no backend of the chain takes: ``quantize_int8_rowwise``,
``quantize_mxfp8``, ``quantize_w4a4_convrot``, ``quantize_int8_convrot`` and ``quantize_w4a8_rotated`` return None (the format runs its own math), an ``*_async`` op raises :class:`NoKernel` (the caller takes the
synchronous path).
"""
from __future__ import annotations

from dataclasses import dataclass

REQUIRED_OPS = ("quantize_fp8", "quantize_nvfp4", "dequantize_fp8", "dequantize_nvfp4")
OPTIONAL_OPS = ("quantize_int8_rowwise", "quantize_mxfp8", "quantize_w4a4_convrot", "quantize_int8_convrot",
                "quantize_w4a8_rotated",
                "quantize_fp8_async",
                "quantize_nvfp4_async", "quantize_int8_rows_async", "quantize_mxfp8_async",
                "quantize_int8_convrot_async", "quantize_w4a4_convrot_async")
ASYNC_OPS = ("quantize_fp8_async", "quantize_nvfp4_async", "quantize_int8_rows_async", "quantize_mxfp8_async",
             "quantize_int8_convrot_async", "quantize_w4a4_convrot_async")
OPS = REQUIRED_OPS + OPTIONAL_OPS


class NoKernel(LookupError):
    """No backend of the chain takes this call (only for optional ops: eager takes every required one)."""


@dataclass(frozen=True)
class Needs:
    """What one backend's op accepts. None: anything."""
    devices: tuple[str, ...] | None = None      # device types of the input tensor ("cuda", "cpu")
    dtypes: tuple | None = None                 # dtypes of the input tensor
    dims: int | None = None                     # exact number of dimensions
    max_numel: int | None = None                # elements of the input tensor, exclusive
    out_dtypes: tuple | None = None             # the ``dtype`` argument of a dequantize op

    def refuses(self, x, out_dtype=None) -> str | None:
        """Why this op does not take ``x`` (and ``out_dtype``), or None."""
        if self.devices is not None and x.device.type not in self.devices:
            return f"device {x.device.type} (takes {', '.join(self.devices)})"
        if self.dtypes is not None and x.dtype not in self.dtypes:
            return f"dtype {x.dtype}"
        if self.dims is not None and x.dim() != self.dims:
            return f"{x.dim()}-D input (takes {self.dims}-D)"
        if self.max_numel is not None and x.numel() >= self.max_numel:
            return f"{x.numel()} elements (takes < {self.max_numel})"
        if self.out_dtypes is not None and out_dtype is not None and out_dtype not in self.out_dtypes:
            return f"output dtype {out_dtype}"
        return None


ANY = Needs()


def ops_of(backend) -> dict[str, Needs]:
    """The ops a backend implements, with their needs: its ``ops`` mapping, or (a backend without one)
    every known op it has a method for, taking anything."""
    declared = getattr(backend, "ops", None)
    if declared is None:
        return {op: ANY for op in OPS if callable(getattr(backend, op, None))}
    return dict(declared)


def check_backend(backend) -> None:
    """A backend needs a name, ``available(device)`` and a method for every op it declares."""
    if not getattr(backend, "name", None) or not callable(getattr(backend, "available", None)):
        raise TypeError(f"kernel backend {backend!r} lacks a name or available(device)")
    ops = ops_of(backend)
    unknown = sorted(set(ops) - set(OPS))
    missing = [op for op in ops if not callable(getattr(backend, op, None))]
    if unknown or missing or not ops:
        raise TypeError(f"kernel backend {backend!r}: "
                        f"{'unknown ops ' + ', '.join(unknown) if unknown else ''}"
                        f"{'declared but missing ' + ', '.join(missing) if missing else ''}"
                        f"{'no ops' if not ops else ''}")


class Kernels:
    """The ops of one device: each call goes to the first backend of ``chain`` that takes it.
    ``name`` is the chosen (first) backend's."""

    def __init__(self, chain: list):
        self.chain = list(chain)
        self.name = self.chain[0].name
        self.priority = getattr(self.chain[0], "priority", 0)
        self._ops = [(b, ops_of(b)) for b in self.chain]
        self._found: dict = {}

    def find(self, op: str, x, out_dtype=None):
        """The implementation of ``op`` that takes ``x``: the first backend's in the chain, or None. (Remembered per
        op, device type, dtype, dimensions, size and output dtype -- everything a Needs looks at: the per-call
        cost of the seam is one dict lookup.)"""
        key = (op, x.device.type, x.dtype, x.dim(), x.numel(), out_dtype)
        try:
            return self._found[key]
        except KeyError:
            pass
        fn = None
        for b, ops in self._ops:
            needs = ops.get(op)
            if needs is not None and needs.refuses(x, out_dtype) is None:
                fn = getattr(b, op)
                break
        if len(self._found) < 4096:
            self._found[key] = fn
        return fn

    def why_not(self, op: str, x, out_dtype=None) -> str:
        """Per backend of the chain, why it does not take this call."""
        out = []
        for b, ops in self._ops:
            needs = ops.get(op)
            out.append(f"{b.name}: " + ("not implemented" if needs is None else (needs.refuses(x, out_dtype) or "ok")))
        return "; ".join(out)

    def implements(self, *ops: str) -> bool:
        """Whether some backend of the chain implements any of ``ops`` (for some input)."""
        return any(op in bops for _, bops in self._ops for op in ops)

    def _call(self, op: str, x, *args, out_dtype=None, **kw):
        fn = self.find(op, x, out_dtype)
        if fn is None:
            raise NoKernel(f"no kernel backend takes {op} here ({self.why_not(op, x, out_dtype)})")
        return fn(x, *args, **kw)

    # ---- required ops (eager takes every call) --------------------------------------------------------
    def quantize_fp8(self, w, scale=None, *, name: str | None = None, check_finite: str = "deferred"):
        return self._call("quantize_fp8", w, scale, name=name, check_finite=check_finite)

    def quantize_nvfp4(self, w, global_scale=None, *, name: str | None = None):
        return self._call("quantize_nvfp4", w, global_scale, name=name)

    def dequantize_fp8(self, q, scale, dtype=None):
        import torch
        dtype = dtype or torch.float32
        return self._call("dequantize_fp8", q, scale, dtype, out_dtype=dtype)

    def dequantize_nvfp4(self, packed, scales, s2, n: int, k: int, dtype=None):
        import torch
        dtype = dtype or torch.float32
        return self._call("dequantize_nvfp4", packed, scales, s2, n, k, dtype, out_dtype=dtype)

    # ---- optional ops --------------------------------------------------------------------------------
    def quantize_int8_rowwise(self, w, *, name: str | None = None, check_finite: str = "deferred"):
        """(q, scale) from a backend that takes ``w``, else None (the format's own math serves)."""
        fn = self.find("quantize_int8_rowwise", w)
        return None if fn is None else fn(w, name=name, check_finite=check_finite)

    def quantize_mxfp8(self, w, *, name: str | None = None, check_finite: str = "deferred"):
        """(codes, swizzled exponents) from a backend that takes ``w``, else None (the format's own math serves)."""
        fn = self.find("quantize_mxfp8", w)
        return None if fn is None else fn(w, name=name, check_finite=check_finite)

    def quantize_w4a4_convrot(self, w, group: int, *, name: str | None = None, check_finite: str = "deferred"):
        """(packed, scale) from a backend that takes ``w``, else None (the format's own math serves)."""
        fn = self.find("quantize_w4a4_convrot", w)
        return None if fn is None else fn(w, group, name=name, check_finite=check_finite)

    def quantize_int8_convrot(self, w, group: int, *, name: str | None = None, check_finite: str = "deferred"):
        """(q, scale) of the ConvRot-rotated ``w`` from a backend that takes it, else None (the format's own math)."""
        fn = self.find("quantize_int8_convrot", w)
        return None if fn is None else fn(w, group, name=name, check_finite=check_finite)

    def quantize_w4a8_rotated(self, r, codebook, *, name: str | None = None, check_finite: str = "deferred"):
        """W4A8's per-group quantizer on the ConvRot-rotated weight ``r`` with the tensor's ``codebook`` ->
        (packed, s_rel, s_channel) from a backend that takes ``r`` and can match the reference bit for bit on its
        device, else None (the format's own math serves)."""
        fn = self.find("quantize_w4a8_rotated", r)
        return None if fn is None else fn(r, codebook, name=name, check_finite=check_finite)

    def quantize_fp8_async(self, x, scale=None):
        return self._call("quantize_fp8_async", x, scale)

    def quantize_nvfp4_async(self, x, global_scale=None):
        return self._call("quantize_nvfp4_async", x, global_scale)

    def quantize_int8_rows_async(self, x):
        return self._call("quantize_int8_rows_async", x)

    def quantize_mxfp8_async(self, x):
        return self._call("quantize_mxfp8_async", x)

    def quantize_int8_convrot_async(self, x, group: int):
        return self._call("quantize_int8_convrot_async", x, group)

    def quantize_w4a4_convrot_async(self, x, group: int):
        return self._call("quantize_w4a4_convrot_async", x, group)

    def flush(self) -> None:
        """Raise the first deferred finiteness error of any backend of the chain."""
        for b in self.chain:
            if callable(getattr(b, "flush", None)):
                b.flush()

    def available(self, device="cpu") -> bool:
        return self.chain[0].available(device)

    def __repr__(self):
        return f"<kernels {' -> '.join(b.name for b in self.chain)}>"
