"""Hand-made inputs on the kernels' rounding edges, shared by the interpreter cases and the GPU tests."""
import torch


def mxfp8_boundary_blocks(dtype=torch.float32):
    """Blocks whose amax / 448 lies on, just above and just below powers of two (the E8M0 exponent's ceil(log2)
    edge, where log2's last bit decides), 64 exponents wide, one block of 32 per row."""
    e = torch.arange(-40, 24, dtype=torch.float64)
    j = torch.tensor([0, 1, 2, 3, 5, 6, 9, 17, -1, -2], dtype=torch.float64)
    amax = (448.0 * torch.pow(2.0, e)[:, None] * (1 + j[None, :] * 2.0 ** -23)).reshape(-1).float()
    x = torch.randn(amax.numel(), 32, generator=torch.Generator().manual_seed(5)).clamp(-1, 1) * amax[:, None] * 0.9
    x[:, 7] = -amax
    return x.to(dtype)
