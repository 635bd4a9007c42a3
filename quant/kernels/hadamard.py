"""The ConvRot rotation (regular Hadamard matrices, Kronecker powers of H4, divided by sqrt(g)) as torch ops: the
math of comfy-kitchen's eager reference (one batched matmul in the weight's own dtype). quant.formats.convrot holds
the format facts around it and re-exports these; the Triton kernels take the same matrix."""
from __future__ import annotations


def is_group_size(g) -> bool:
    """A valid regular-Hadamard size: a power of 4, at least 4."""
    return isinstance(g, int) and not isinstance(g, bool) and g >= 4 and (g & (g - 1)) == 0 \
        and (g.bit_length() - 1) % 2 == 0


_H_CACHE: dict = {}


def hadamard(g: int, dtype=None, device="cpu"):
    """The normalised regular Hadamard matrix of size ``g`` (entries +-1/sqrt(g), exact in every float dtype)."""
    import torch
    if not is_group_size(g):
        raise ValueError(f"ConvRot group size must be a power of 4 (>= 4), got {g!r}")
    dtype = dtype or torch.float32
    key = (g, dtype, str(device))
    h = _H_CACHE.get(key)
    if h is None:
        base = torch.tensor([[1, 1, 1, -1], [1, 1, -1, 1], [1, -1, 1, 1], [-1, 1, 1, 1]], dtype=dtype, device=device)
        h = base
        while h.shape[0] < g:
            h = torch.kron(h, base)
        h = h / (g ** 0.5)                       # a power of two: exact
        _H_CACHE[key] = h
    return h


def rotate(w, g: int):
    """``w`` [n, k] with each group of ``g`` columns multiplied by H.T (in ``w``'s dtype)."""
    import torch
    n, k = w.shape
    if k % g:
        raise ValueError(f"K={k} is not divisible by the ConvRot group size {g}")
    h = hadamard(g, w.dtype, w.device)
    return torch.matmul(w.reshape(n, k // g, g), h.T).reshape(n, k)


def rotate_chunk(x, group: int, out=None):
    """``x`` [n, k] (contiguous) rotated per group: torch.mm of the [n * k / group, group] view with h.T, the call
    torch.matmul(x.reshape(n, k / group, group), h.T) of kitchen's eager _rotate_weight folds into; ``out`` (a
    contiguous [n * k / group, group] buffer, or a slice of one) receives it without a new allocation. The chunked
    rotations of the int8-convrot kernel path and of w4a8-int8 are this call per row chunk."""
    import torch
    n, k = x.shape
    a = x.view(n * (k // group), group)
    ht = hadamard(group, x.dtype, x.device).T          # kitchen's operand: the transposed VIEW (cached matrix)
    if out is None:
        return torch.mm(a, ht).view(n, k)
    torch.mm(a, ht, out=out)
    return out.view(n, k)


def rotate_rows(x, g: int):
    """Online activation rotation: the last dim of ``x`` in groups of ``g`` times H (kitchen's activation path)."""
    import torch
    shape = x.shape
    h = hadamard(g, x.dtype, x.device)
    return torch.matmul(x.reshape(-1, shape[-1] // g, g), h).reshape(shape)
