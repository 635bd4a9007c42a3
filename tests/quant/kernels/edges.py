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


W4A8_GROUP_KINDS = ("normal", "tiny", "zeros", "equal", "spike", "large", "subnormal", "ties")


def w4a8_group(kind, g, dtype):
    """One group of 16 rotated-domain values of a given kind (W4A8's per-group quantizer edges)."""
    big = {torch.float32: 1e35, torch.bfloat16: 1e35, torch.float16: 6e4}[dtype]
    sub = {torch.float32: 1e-42, torch.bfloat16: 1e-40, torch.float16: 3e-7}[dtype]
    x = torch.randn(16, generator=g)
    if kind == "normal":
        return x
    if kind == "tiny":
        return x * 1e-12
    if kind == "zeros":
        return torch.zeros(16)
    if kind == "equal":
        return torch.full((16,), float(x[0]))
    if kind == "spike":
        return torch.zeros(16).index_fill_(0, torch.tensor([int(torch.randint(0, 16, (1,), generator=g))]), 3.0)
    if kind == "large":
        return x.sign() * big
    if kind == "subnormal":
        return x.sign() * sub * torch.randint(1, 8, (16,), generator=g)
    if kind == "ties":       # values on halves of the int8 grid once scaled
        return torch.randint(-20, 20, (16,), generator=g) + 0.5
    raise AssertionError(kind)


def w4a8_rotated(n, k, kinds, mag, dtype, g):
    """[n, k] of groups of the given kinds (scaled by ``mag`` except zeros / large / subnormal)."""
    groups = []
    for _ in range(n * k // 16):
        kind = kinds[int(torch.randint(0, len(kinds), (1,), generator=g))]
        v = w4a8_group(kind, g, dtype)
        groups.append(v if kind in ("large", "subnormal", "zeros") else v * mag)
    return torch.stack(groups).view(n, k).to(dtype)


def w4a8_codebook(kind, g=None):
    """The fixed table, or a codebook of one of the shapes a Lloyd fit can leave (sorted, with duplicates, unsorted),
    or one of small levels whose group scales overflow e4m3."""
    from quant.formats.w4a8_int8 import FIXED_CODEBOOK
    if kind == "fixed":
        return torch.tensor(FIXED_CODEBOOK, dtype=torch.float32)
    if kind == "random":
        return torch.sort(torch.rand(16, generator=g) * 2 - 1).values
    if kind == "duplicates":
        c = torch.sort(torch.rand(16, generator=g) * 2 - 1).values
        c[5] = c[6]
        c[10] = c[11] = c[12]
        return c
    if kind == "unsorted":
        return torch.rand(16, generator=g) * 2 - 1
    if kind == "narrow":
        return torch.linspace(-0.1, 0.1, 16)
    raise AssertionError(kind)
