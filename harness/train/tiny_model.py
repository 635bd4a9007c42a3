"""Train the tiny reference WAN 2.1 t2v model (``quant.arch`` ``wan21-t2v-tiny``) on procedural data.

The network is ComfyUI's own ``comfy.ldm.wan.model.WanModel`` (imported from the embedded ComfyUI),
so the trained state dict has the real tensor names and computes exactly what ComfyUI samples.
Training matches the render workflow's sampling: WAN 2.1's ``ModelSamplingDiscreteFlow`` (CONST,
rectified flow ``x_t = (1 - s) x0 + s n``, the model predicts ``v = n - x0``, timestep = 1000 s,
``shift = 8``). Training sigmas are logit-normal (``sigmoid(N(0, 1))``, as in SD3/Flux training):
all noise levels are trained, not only the high ones that ``shift(t)`` of a uniform ``t`` would
give (a median sigma of 0.89). Data: :mod:`harness.train.data` (one fixed palette per class, so the
conditioning decides the colours) in the analytic latent space of :mod:`harness.train.latent`
(64x64 and 96x64 pixel images = 8x8 and 8x12 latents). No weight decay: with it, the conditioning
path (used by one token set per class) decayed and the first model ignored its conditioning.

Deterministic from ``seed``: every tensor and every batch comes from seeded CPU generators and the
run uses a fixed thread count (``THREADS`` = 1), so the same call writes the same bytes on the same machine.
The committed weights (bf16, ``WEIGHTS``) are what the demo and the render tests use.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARCH = "wan21-t2v-tiny"
WEIGHTS = Path(__file__).resolve().parent / "wan21-t2v-tiny.safetensors"
SHIFT = 8.0                       # comfy/supported_models.py WAN21_T2V sampling_settings
MULTIPLIER = 1000.0               # ModelSamplingDiscreteFlow: timestep = sigma * 1000
LATENT_SIZES = ((8, 8), (8, 12))  # (h, w) latents of the render plan's 64x64 and 96x64 images
THREADS = 1                       # 2 OpenMP threads ran 10-20x slower on the shared 2-core box (spin contention)


@dataclass
class Config:
    seed: int = 0
    steps: int = 2500
    batch: int = 32
    lr: float = 3e-3
    warmup: int = 50
    weight_decay: float = 0.0
    ema: float = 0.998
    sizes: tuple = LATENT_SIZES
    classes: tuple = (1, 2, 3)
    extra: dict = field(default_factory=dict)


def _comfy():
    """ComfyUI's WAN module (embedded copy), imported CPU-only."""
    from harness.comfy.server import embedded_source
    root = str(embedded_source())
    if root not in sys.path:
        sys.path.insert(0, root)
    from comfy.cli_args import args
    args.cpu = True
    import comfy.ldm.wan.model as wan
    import comfy.ops
    return wan, comfy.ops


def build_model():
    """An uninitialised WanModel of the ``wan21-t2v-tiny`` shape (as ComfyUI's detection configures it)."""
    from quant import arch
    wan, ops = _comfy()
    p = arch.get(ARCH).params
    return wan.WanModel(model_type="t2v", patch_size=(1, 2, 2), dim=p["dim"], ffn_dim=p["ffn_dim"], freq_dim=256,
                        text_dim=4096, in_dim=16, out_dim=16, num_heads=p["dim"] // 128, num_layers=p["num_layers"],
                        window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6,
                        operations=ops.disable_weight_init)


def init_weights(model, seed: int) -> None:
    """WAN's own init (xavier-uniform Linears, N(0, 0.02) embeddings, zero head, randn/sqrt(dim)
    modulation), each tensor from its own seeded generator."""
    import torch
    with torch.no_grad():
        for i, (name, t) in enumerate(model.state_dict(keep_vars=True).items()):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + i)
            if name.endswith("modulation"):
                t.copy_(torch.randn(t.shape, generator=gen) / math.sqrt(t.shape[-1]))
            elif name.endswith(".bias"):
                t.zero_()
            elif t.dim() == 1:
                t.fill_(1.0)
            elif name.startswith("head.head"):
                t.zero_()
            elif name.startswith(("text_embedding", "time_embedding")):
                t.copy_(0.02 * torch.randn(t.shape, generator=gen))
            else:
                fan_in, fan_out = math.prod(t.shape[1:]), t.shape[0]
                a = math.sqrt(6.0 / (fan_in + fan_out))
                t.copy_((torch.rand(t.shape, generator=gen) * 2 - 1) * a)


def shifted_sigma(t, shift: float = SHIFT):
    return shift * t / (1 + (shift - 1) * t)


def simple_sigmas(steps: int, shift: float = SHIFT) -> list[float]:
    """The ``simple`` scheduler's sigmas on ModelSamplingDiscreteFlow (1000 discrete timesteps)."""
    import torch
    table = shifted_sigma(torch.arange(1, 1001, dtype=torch.float64) / 1000.0, shift)
    ss = len(table) / steps
    return [float(table[-(1 + int(x * ss))]) for x in range(steps)] + [0.0]


def _batch(cfg: Config, step: int):
    """Seeded batch ``step``: (z0, noise, sigma, context)."""
    import torch
    from . import data, latent
    gen = torch.Generator().manual_seed(cfg.seed * 7_919 + step)
    h, w = cfg.sizes[step % len(cfg.sizes)]
    ids = [cfg.classes[int(i)] for i in torch.randint(0, len(cfg.classes), (cfg.batch,), generator=gen)]
    rgb, _ = data.batch(gen, cfg.batch, h * latent.FACTOR, w * latent.FACTOR, ids)
    z0 = latent.encode(rgb)[:, :, None]                          # [B, 16, 1, h, w]
    noise = torch.randn(z0.shape, generator=gen)
    sigma = torch.sigmoid(torch.randn(cfg.batch, generator=gen, dtype=torch.float32))
    ctx = torch.cat([_cond(c) for c in ids])
    return z0, noise, sigma, ctx


_CONDS: dict = {}


def _cond(class_id: int):
    from . import data
    if class_id not in _CONDS:
        _CONDS[class_id] = data.conditioning(class_id)
    return _CONDS[class_id]


def flow_loss(model, z0, noise, sigma, ctx):
    import torch.nn.functional as F
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * z0 + s * noise
    v = model(xt, sigma * MULTIPLIER, ctx)
    return F.mse_loss(v, noise - z0)


def train(cfg: Config, log=None, progress: bool = True):
    """Train; returns (EMA state dict in fp32, info dict)."""
    import torch
    from tqdm.auto import tqdm
    torch.set_num_threads(THREADS)
    torch.manual_seed(cfg.seed)
    log = log or (lambda *_: None)
    model = build_model()
    init_weights(model, cfg.seed)
    model.train()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters()]
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.endswith("modulation")]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and not n.endswith("modulation"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99), eps=1e-8)
    t0 = time.monotonic()
    losses = []
    bar = tqdm(range(cfg.steps), desc="train-tiny", unit="step", disable=not progress, file=sys.stderr)
    for step in bar:
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps)))
        for g in opt.param_groups:
            g["lr"] = lr
        z0, noise, sigma, ctx = _batch(cfg, step)
        loss = flow_loss(model, z0, noise, sigma, ctx)
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
    """sha256 of the code that defines the model, its data and its latent map (stored in the weights'
    metadata): of each module's syntax tree without docstrings, so comments and docs do not count."""
    import ast
    from . import data, latent
    h = hashlib.sha256()
    for m in (sys.modules[__name__], data, latent):
        tree = ast.parse(Path(m.__file__).read_text())
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        h.update(ast.dump(tree).encode())
    return h.hexdigest()


def save(state: dict, path, cfg: Config, info: dict):
    """Write ``state`` in bf16, in the ``quant.arch`` template order, atomically."""
    import torch
    from quant import arch
    from quant.safetensors_io import AtomicWriter, dtype_name
    names = [n for n, _ in arch.get(ARCH).tensors()]
    if set(names) != set(state):
        raise RuntimeError(f"trained state dict and {ARCH} template differ: "
                           f"{sorted(set(names) ^ set(state))[:5]}")
    c = asdict(cfg)
    c["sizes"] = [list(s) for s in cfg.sizes]
    c["classes"] = list(cfg.classes)
    meta = {"quantgate_model": ARCH, "quantgate_train": json.dumps({"config": c, **info}, sort_keys=True),
            "quantgate_script_sha256": script_hash(), "modelspec.architecture": "wan2.1-t2v"}
    entries = [(n, dtype_name(torch.bfloat16), tuple(state[n].shape)) for n in names]
    with AtomicWriter(Path(path), entries, meta) as w:
        for n in names:
            w.write(n, state[n].detach().to(torch.bfloat16).contiguous())
    return Path(path)


def load_model(path=WEIGHTS, dtype=None):
    """A WanModel with the weights of ``path`` (eval mode, fp32 compute unless ``dtype``)."""
    import torch
    from quant.safetensors_io import SafetensorsFile
    model = build_model()
    with SafetensorsFile(path) as f:
        sd = {n: f.get(n).to(dtype or torch.float32) for n in f.keys()}
    model.load_state_dict(sd, strict=True)
    return model.eval()


def sample(model, class_id: int, seed: int, h: int = 8, w: int = 8, steps: int = 6, hooks=None):
    """Euler + simple schedule like the render workflow (cfg 1): the final normalised latent [1,16,1,h,w].
    Noise as ComfyUI's ``prepare_noise``: ``torch.manual_seed(seed)``, randn of the latent shape."""
    import torch
    gen = torch.manual_seed(seed)
    x = torch.randn((1, 16, 1, h, w), generator=gen, dtype=torch.float32, device="cpu")
    sig = simple_sigmas(steps)
    ctx = _cond(class_id)
    with torch.no_grad():
        for i in range(steps):
            s = torch.tensor([sig[i]], dtype=torch.float32)
            v = model(x, s * MULTIPLIER, ctx)
            den = x - s.view(-1, 1, 1, 1, 1) * v
            x = den if sig[i + 1] == 0 else x + (sig[i + 1] - sig[i]) * (x - den) / sig[i]
    return x
