"""The tiny Qwen-Image reference models: ``qwen-image-tiny`` (text-to-image) and ``qwen-image-edit-tiny``
(edit: a reference image through ComfyUI's ``ReferenceLatent`` conditioning).

ComfyUI builds a Qwen-Image model from a file by detection, and its detection (0.3.75 and 0.33 alike)
reads only ``in_channels`` and the block count: the width is always the real one (24 heads of 128 =
3072, text width 3584). A Qwen-Image file that ComfyUI loads is therefore at least one full-width
block (380 M parameters). The trained part is small: a **core** of the same class
(``comfy.ldm.qwen_image.model.QwenImageTransformer2DModel``, ComfyUI's own module) with ONE head of
128 and one block, trained here and committed in bf16 (~2.3 MB). :func:`expand` writes the core as
the real-width model: every stream vector of the full model is 24 copies of the core's (LayerNorm
and RMSNorm of a tiled vector equal those of the vector), every square Linear is block-diagonal with
the core's matrix in each of its 24 diagonal blocks, Linears from an untiled input (timestep, latent,
text) repeat the core's rows, and the output projection reads the first copy. The 24 heads are then
24 copies of the core's one head, so the expanded file computes exactly what the core computes; its
values are the core's bf16 values (exact, no rescaling), so per-tensor and per-block quantization of
the full file quantize the core's values.

Training as the render workflow samples: Qwen-Image's ``ModelSamplingFlux`` (shift 1.15, timestep =
sigma; the model scales it by 1000 itself), rectified flow ``x_t = (1 - s) x0 + s n``, v = n - x0,
logit-normal training sigmas. Data: :mod:`harness.train.data` (the WAN tiny model's classes and
palettes) in the analytic latent space of :mod:`harness.train.latent` (the WAN 2.1 VAE latent, as
Qwen-Image uses). Conditioning: ``QGRandomConditioning(seed = class id, tokens 16, dim 3584)``.

Edit model: half of each batch is an edit example: the reference image (any class) is encoded by
:mod:`harness.train.encoder` (what the workflow's ``VAEEncode`` with the analytic TAEHV encoder
computes) and given as ``ref_latents`` (ComfyUI's ``index`` method: the reference's tokens follow the
image tokens with frame index 1), the target is the reference scene with its colours inverted
(``1 - rgb``), whatever the text conditioning; the other half is text-to-image as above.

Deterministic from the seed with one thread, like :mod:`harness.train.tiny_model`.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
NAMES = ("qwen-image-tiny", "qwen-image-edit-tiny")
CORE_DIM = 128                    # one head of 128
HEADS = 24                        # ComfyUI's QwenImage: 24 heads of 128 (not read from the file)
FULL_DIM = HEADS * CORE_DIM       # 3072
JOINT_DIM = 3584                  # text width (txt_norm / txt_in)
IN_CH = 64                        # 16 latent channels x 2 x 2 patch
NUM_LAYERS = 1
COND_TOKENS = 16
SHIFT = 1.15                      # comfy/supported_models.py QwenImage sampling_settings
LATENT_SIZES = ((8, 8), (8, 12))
THREADS = 1


def weights_path(name: str) -> Path:
    return HERE / f"{name}-core.safetensors"


@dataclass
class Config:
    name: str = "qwen-image-tiny"
    seed: int = 0
    steps: int = 1800
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 50
    ema: float = 0.998
    sizes: tuple = LATENT_SIZES
    classes: tuple = (1, 2, 3)
    edit_share: float = 0.0       # > 0: every other batch is an edit batch
    init_from: str = ""           # start from this model's committed core (the edit model: qwen-image-tiny)
    extra: dict = field(default_factory=dict)


def config(name: str, **over) -> Config:
    if name not in NAMES:
        raise KeyError(name)
    edit = name == "qwen-image-edit-tiny"
    base = Config(name=name, edit_share=0.5 if edit else 0.0, steps=1500 if edit else 1800,
                  init_from="qwen-image-tiny" if edit else "")
    for k, v in over.items():
        setattr(base, k, v)
    return base


def _comfy():
    from .tiny_model import _comfy as wan_comfy
    wan_comfy()
    import comfy.ldm.qwen_image.model as qm
    import comfy.ops
    return qm, comfy.ops


def build_model(heads: int = 1, num_layers: int = NUM_LAYERS):
    """ComfyUI's QwenImageTransformer2DModel: ``heads=1`` is the trained core, ``heads=24`` what
    ComfyUI builds for a file with ``num_layers`` blocks."""
    qm, ops = _comfy()
    return qm.QwenImageTransformer2DModel(in_channels=IN_CH, out_channels=16, num_layers=num_layers,
                                          attention_head_dim=CORE_DIM, num_attention_heads=heads,
                                          joint_attention_dim=JOINT_DIM, operations=ops.disable_weight_init)


def init_weights(model, seed: int) -> None:
    import torch
    with torch.no_grad():
        for i, (name, t) in enumerate(model.state_dict(keep_vars=True).items()):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            if name.endswith(".bias"):
                t.zero_()
            elif t.dim() == 1:
                t.fill_(1.0)
            elif name.startswith("proj_out") or "_mod." in name or name.startswith("norm_out.linear"):
                t.zero_() if name.startswith("proj_out") else t.copy_(0.02 * torch.randn(t.shape, generator=gen))
            else:
                fan_in, fan_out = t.shape[1], t.shape[0]
                a = math.sqrt(6.0 / (fan_in + fan_out))
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * a)


def conditioning(class_id: int):
    """What ``QGRandomConditioning(seed=class_id, tokens=16, dim=3584, scale=1.0)`` returns."""
    import torch
    gen = torch.Generator(device="cpu").manual_seed(int(class_id))
    return torch.randn((1, COND_TOKENS, JOINT_DIM), generator=gen, dtype=torch.float32)


def flux_sigma(t, shift: float = SHIFT):
    """comfy.model_sampling.flux_time_shift(shift, 1.0, t)."""
    return math.exp(shift) / (math.exp(shift) + (1 / t - 1))


def simple_sigmas(steps: int, shift: float = SHIFT) -> list[float]:
    """The ``simple`` scheduler on ModelSamplingFlux (10,000 timesteps)."""
    n = 10_000
    ss = n / steps
    return [flux_sigma((n - int(x * ss)) / n, shift) for x in range(steps)] + [0.0]


_CONDS: dict = {}


def _cond(c: int):
    if c not in _CONDS:
        _CONDS[c] = conditioning(c)
    return _CONDS[c]


def edit_target(rgb):
    """What the edit model draws for a reference image: its colours inverted."""
    return 1.0 - rgb


def edit_scenes(gen, n: int, h: int, w: int):
    """``n`` reference images like the edit workflow builds from core nodes (``EmptyImage`` +
    ``ImageCompositeMasked``): one square box of a random colour on a random solid background."""
    import torch
    out = []
    for _ in range(n):
        bg, fg = torch.rand(3, generator=gen), torch.rand(3, generator=gen)
        s = int(16 + torch.randint(0, 17, (1,), generator=gen))
        y = int(torch.randint(0, h - s + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - s + 1, (1,), generator=gen))
        img = bg.view(3, 1, 1).expand(3, h, w).clone()
        img[:, y:y + s, x:x + s] = fg.view(3, 1, 1)
        out.append(img)
    return torch.stack(out)


def _batch(cfg: Config, step: int):
    """Seeded batch ``step``: (z0, noise, sigma, context, ref or None)."""
    import torch
    from . import data, encoder, latent
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    h, w = cfg.sizes[step % len(cfg.sizes)]
    ids = [cfg.classes[int(i)] for i in torch.randint(0, len(cfg.classes), (cfg.batch,), generator=gen)]
    rgb, _ = data.batch(gen, cfg.batch, h * latent.FACTOR, w * latent.FACTOR, ids)
    noise = torch.randn((cfg.batch, 16, 1, h, w), generator=gen)
    sigma = torch.sigmoid(torch.randn(cfg.batch, generator=gen, dtype=torch.float32))
    ctx = torch.cat([_cond(c) for c in ids])
    if cfg.edit_share <= 0 or step % 2 == 0:     # edit model: odd steps are edit batches (half box scenes)
        return latent.encode(rgb)[:, :, None], noise, sigma, ctx, None
    boxes = edit_scenes(gen, cfg.batch // 2, h * latent.FACTOR, w * latent.FACTOR)
    rgb = torch.cat([rgb[: cfg.batch - len(boxes)], boxes])
    ref = encoder.encode(rgb)[:, :, None]
    return latent.encode(edit_target(rgb))[:, :, None], noise, sigma, ctx, ref


def flow_loss(model, z0, noise, sigma, ctx, ref=None):
    import torch.nn.functional as F
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * z0 + s * noise
    v = model(xt, sigma, ctx, ref_latents=[ref] if ref is not None else None)
    return F.mse_loss(v, noise - z0)


def train(cfg: Config, log=None, progress: bool = True):
    """Train the core; returns (EMA state dict in fp32, info dict)."""
    import torch
    from tqdm.auto import tqdm
    torch.set_num_threads(THREADS)
    torch.manual_seed(cfg.seed)
    model = build_model()
    init_weights(model, cfg.seed)
    if cfg.init_from:
        model.load_state_dict(load_core(weights_path(cfg.init_from), torch.float32), strict=True)
    model.train()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.0)
    t0 = time.monotonic()
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"train {cfg.name}", unit="step", disable=not progress, file=sys.stderr)
    for step in bar:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        loss = flow_loss(model, *_batch(cfg, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    bar.close()
    info = {"train_s": round(time.monotonic() - t0, 1), "loss_first50": sum(losses[:50]) / max(1, len(losses[:50])),
            "loss_last50": sum(losses[-50:]) / max(1, len(losses[-50:])), "threads": THREADS,
            "torch": torch.__version__}
    return ema, info


def script_hash() -> str:
    from . import data, encoder, latent
    from .tiny_model import script_hash as _  # noqa: F401  (same hashing rule)
    import ast
    h = hashlib.sha256()
    for m in (sys.modules[__name__], data, latent, encoder):
        tree = ast.parse(Path(m.__file__).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        h.update(ast.dump(tree).encode())
    return h.hexdigest()


def save(state: dict, path, cfg: Config, info: dict) -> Path:
    """The core in bf16 (names sorted), atomically."""
    import torch
    from quant.safetensors_io import AtomicWriter, dtype_name
    names = sorted(state)
    c = asdict(cfg)
    c["sizes"] = [list(s) for s in cfg.sizes]
    c["classes"] = list(cfg.classes)
    meta = {"quantgate_model": cfg.name, "quantgate_core": f"qwen-image core: 1 head of {CORE_DIM}, {NUM_LAYERS} block",
            "quantgate_train": json.dumps({"config": c, **info}, sort_keys=True),
            "quantgate_script_sha256": script_hash()}
    entries = [(n, dtype_name(torch.bfloat16), tuple(state[n].shape)) for n in names]
    with AtomicWriter(Path(path), entries, meta) as w:
        for n in names:
            w.write(n, state[n].detach().to(torch.bfloat16).contiguous())
    return Path(path)


def load_core(path, dtype=None) -> dict:
    import torch
    from quant.safetensors_io import SafetensorsFile
    with SafetensorsFile(path) as f:
        return {n: f.get(n).to(dtype) if dtype else f.get(n) for n in f.keys()}


def load_model(path, heads: int = 1, dtype=None):
    """The core (``heads=1``) or its expansion (``heads=24``) as a model, eval mode, fp32 unless ``dtype``."""
    import torch
    core = load_core(path, dtype or torch.float32)
    sd = core if heads == 1 else expand(core, heads)
    m = build_model(heads=heads)
    m.load_state_dict(sd, strict=True)
    return m.eval()


# ---- the real-width file ------------------------------------------------------------------------

def _chunked(w, chunks: int, k: int, d: int):
    """Core [chunks*d, d] (or bias [chunks*d]) -> full [chunks*k*d, k*d]: each chunk block-diagonal."""
    import torch
    if w.dim() == 1:
        return torch.cat([w[c * d:(c + 1) * d].repeat(k) for c in range(chunks)])
    out = torch.zeros((chunks * k * d, k * d), dtype=w.dtype)
    for c in range(chunks):
        for j in range(k):
            out[c * k * d + j * d: c * k * d + (j + 1) * d, j * d:(j + 1) * d] = w[c * d:(c + 1) * d]
    return out


def _blockdiag(w, k: int):
    import torch
    o, i = w.shape
    out = torch.zeros((k * o, k * i), dtype=w.dtype)
    for j in range(k):
        out[j * o:(j + 1) * o, j * i:(j + 1) * i] = w
    return out


def expand_tensor(name: str, t, k: int = HEADS):
    """One core tensor -> its real-width tensor (see the module docstring)."""
    import torch
    d = CORE_DIM
    if t.dim() == 1 and (name.endswith("norm_q.weight") or name.endswith("norm_k.weight")
                         or name.endswith("norm_added_q.weight") or name.endswith("norm_added_k.weight")
                         or name == "txt_norm.weight" or name == "proj_out.bias"):
        return t.clone()
    if name.startswith("norm_out.linear"):
        return _chunked(t, 2, k, d)
    if "_mod.1." in name:
        return _chunked(t, 6, k, d)
    if name == "proj_out.weight":
        out = torch.zeros((t.shape[0], k * d), dtype=t.dtype)
        out[:, :d] = t
        return out
    if t.dim() == 1:                                   # every other bias: one copy per head
        return t.repeat(k)
    if name.startswith(("img_in.", "txt_in.", "time_text_embed.timestep_embedder.linear_1.")):
        return t.repeat(k, 1)                          # untiled input
    return _blockdiag(t, k)                            # tiled input and output


def expand(core: dict, k: int = HEADS) -> dict:
    return {n: expand_tensor(n, t, k) for n, t in core.items()}


def full_names() -> list[tuple[str, tuple]]:
    """(name, shape) of the real-width file, in ``quant.arch``'s Qwen-Image template order."""
    from quant import arch
    return [(n, s) for n, s in arch.qwen_image(num_layers=NUM_LAYERS)]


def write_full(core_path, out_path, dtype=None) -> Path:
    """The real-width Qwen-Image file (bf16 unless ``dtype``) of a committed core, atomically."""
    import torch
    from quant.safetensors_io import AtomicWriter, SafetensorsFile, dtype_name
    dtype = dtype or torch.bfloat16
    with SafetensorsFile(core_path) as f:
        meta = dict(f.metadata or {})
        core = {n: f.get(n) for n in f.keys()}
    names = full_names()
    if {n for n, _ in names} != set(core):
        raise RuntimeError(f"core and Qwen-Image template differ: {sorted({n for n, _ in names} ^ set(core))[:5]}")
    meta["quantgate_expanded"] = f"{HEADS} copies of the core's head (block-diagonal); real Qwen-Image width"
    meta["modelspec.architecture"] = "qwen-image"
    entries = [(n, dtype_name(dtype), tuple(s)) for n, s in names]
    with AtomicWriter(Path(out_path), entries, meta) as w:
        for n, s in names:
            t = expand_tensor(n, core[n]).to(dtype).contiguous()
            if tuple(t.shape) != tuple(s):
                raise RuntimeError(f"{n}: expanded to {tuple(t.shape)}, template {tuple(s)}")
            w.write(n, t)
    return Path(out_path)


# ---- sampling like the workflow (no server) -----------------------------------------------------

def sample(model, class_id: int, seed: int, h: int = 8, w: int = 8, steps: int = 6, ref=None):
    """Euler + simple like the render workflow (cfg 1): the final normalised latent [1,16,1,h,w]."""
    import torch
    gen = torch.manual_seed(seed)
    x = torch.randn((1, 16, 1, h, w), generator=gen, dtype=torch.float32, device="cpu")
    sig = simple_sigmas(steps)
    ctx = _cond(class_id)
    with torch.no_grad():
        for i in range(steps):
            s = torch.tensor([sig[i]], dtype=torch.float32)
            v = model(x, s, ctx, ref_latents=[ref] if ref is not None else None)
            den = x - s.view(-1, 1, 1, 1, 1) * v
            x = den if sig[i + 1] == 0 else x + (sig[i + 1] - sig[i]) * (x - den) / sig[i]
    return x
