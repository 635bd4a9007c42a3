"""ConvRot facts shared by the rotated formats (int8-convrot, w4a4-convrot, w4a8-int8).

ConvRot rotates every Linear weight in groups of ``g`` input columns by a *regular* Hadamard matrix
(Kronecker powers of H4 = [[1,1,1,-1],[1,1,-1,1],[1,-1,1,1],[-1,1,1,1]], divided by sqrt(g)):
``W_rot[:, group] = W[:, group] @ H.T``. H is symmetric and orthogonal (H = H.T = H^-1), so decoding rotates
the same way again, activations are rotated online with the same H and ``x @ W.T == rot(x) @ rot(W).T``.
``g`` must be a power of 4 (4, 16, 64, 256) dividing K; ComfyUI reads it per layer from
``convrot_groupsize`` (default 256).

The arithmetic follows comfy-kitchen's reference (the rotation is one batched matmul in the weight's own
dtype), so the rotated weight -- and the bytes quantized from it -- are the same as kitchen's on the same
input and device.
"""
from __future__ import annotations

GROUP_SIZES = (256, 64, 16)          # preferred first: Comfy-Org's files use 256
DEFAULT_GROUP = 256


def group_for(k: int, sizes: tuple[int, ...] = GROUP_SIZES) -> int | None:
    """The largest ConvRot group size that divides ``k`` (None: none does)."""
    return next((g for g in sizes if k % g == 0), None)


from ..kernels.hadamard import hadamard, is_group_size, rotate, rotate_chunk, rotate_rows  # noqa: E402,F401  (re-exported)


# ---- signed int4 in int8 storage: two codes per byte, the EVEN column in the LOW nibble (kitchen) ----------
def pack_int4(codes):
    """[n, k] int codes in [-8, 7] -> [n, k/2] int8, even column in bits 0..3, odd column in bits 4..7."""
    import torch
    lo = codes[..., 0::2].to(torch.int32) & 0xF
    hi = codes[..., 1::2].to(torch.int32) & 0xF
    return (lo | (hi << 4)).to(torch.int8)


def unpack_int4(packed, signed: bool = True):
    """Inverse of :func:`pack_int4` -> int8 codes [n, 2 * cols] (two's-complement nibbles when ``signed``)."""
    import torch
    b = packed.to(torch.int32)
    lo, hi = b & 0xF, (b >> 4) & 0xF
    if signed:
        lo = lo - ((lo >> 3) << 4)
        hi = hi - ((hi >> 3) << 4)
    return torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], -1).to(torch.int8)


def group_problems(g, k: int, allowed: tuple[int, ...] | None = None) -> list[str]:
    """Why a declared ``convrot_groupsize`` cannot decode a weight with K = ``k`` (empty: it can)."""
    if not is_group_size(g):
        return [f"convrot_groupsize {g!r} is not a power of 4 (kitchen's regular Hadamard sizes: 4, 16, 64, 256)"]
    if k % g:
        return [f"convrot_groupsize {g} does not divide K={k}"]
    if allowed is not None and g not in allowed:
        return [f"convrot_groupsize {g} is not one the format's kernel takes ({', '.join(map(str, allowed))})"]
    return []


class RotatedFourBit:
    """What the two ConvRot 4-bit formats (w4a4-convrot, w4a8-int8) share: their activation emulation is the
    layer's Hadamard group, and a layer config's group is checked against K the same way."""

    def emulation(self, conf):
        return {"format": self.kernel, "group": self.verify_group(conf)}

    @staticmethod
    def rotation_problems(conf, k) -> tuple[dict, list[str]]:
        """-> (the config's ``params`` object, the problems of its ConvRot group for K)."""
        from .int8 import convrot_group
        p = conf.get("params") if isinstance(conf.get("params"), dict) else {}
        return p, group_problems(convrot_group(conf), k)
