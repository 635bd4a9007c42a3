"""The trained tiny reference models, one per model family the render gate knows: what each draws,
its built-in workflow, which workflow placeholders take a model file, where its committed weights
are, how it is trained, and the source checkpoint(s) the demo and the render tests convert.

* ``wan21-t2v-tiny``  WAN 2.1 t2v (:mod:`harness.train.tiny_model`), ``wan21_t2v_smoke``;
* ``qwen-image-tiny``  Qwen-Image (:mod:`harness.train.qwen_tiny`; the file is the real 3072-wide,
  one-block model expanded from a trained 1-head core), ``qwen_image_t2i_smoke``;
* ``qwen-image-edit-tiny``  Qwen-Image-Edit (same module; a reference image through
  ``ReferenceLatent``), ``qwen_image_edit_smoke``;
* ``wan22-a14b-tiny``  WAN 2.2 T2V A14B's two experts (:mod:`harness.train.a14b_tiny`),
  ``wan22_a14b_t2v_smoke`` with ``{{model}}`` = the high-noise expert, ``{{model_low}}`` = the
  low-noise expert.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinyModel:
    name: str
    family: str                   # "wan21" | "qwen_image" | "qwen_image_edit" | "wan22_a14b"
    template: str                 # harness/workflows/<template>.json
    slots: tuple                  # workflow placeholders that take this model's files, source order
    draws: str
    describe: str

    @property
    def stem(self) -> str:
        return self.name.replace("-", "_")


MODELS = {m.name: m for m in (
    TinyModel("wan21-t2v-tiny", "wan21", "wan21_t2v_smoke", ("model",),
              "a red disc on a gradient (cond 1), navy/cream stripes (2), orange+cyan boxes on grey (3)",
              "tiny WAN 2.1 t2v trained on procedural images (dim 128, 6 blocks; real tensor names)"),
    TinyModel("qwen-image-tiny", "qwen_image", "qwen_image_t2i_smoke", ("model",),
              "the WAN tiny model's three classes (cond 1 disc, 2 stripes, 3 boxes)",
              "Qwen-Image at its real width (24 heads of 128, text 3584) with 1 block: 24 copies of a "
              "trained 1-head core (ComfyUI's QwenImage class; real tensor names)"),
    TinyModel("qwen-image-edit-tiny", "qwen_image_edit", "qwen_image_edit_smoke", ("model",),
              "the reference image (a box on a plain background) with its colours inverted",
              "Qwen-Image-Edit at its real width with 1 block (core fine-tuned from qwen-image-tiny on "
              "edits: reference image -> its colours inverted; text-to-image kept)"),
    TinyModel("wan22-a14b-tiny", "wan22_a14b", "wan22_a14b_t2v_smoke", ("model", "model_low"),
              "the WAN tiny model's three classes; the high-noise expert before the switch, the low-noise after",
              "WAN 2.2 T2V A14B's two experts (each WAN 2.1-shaped, dim 128, 4 blocks), high-noise trained on "
              "sigma >= 0.875, low-noise below; switched as ComfyUI's A14B workflows do"),
)}
DEFAULT = "wan21-t2v-tiny"


def get(name: str) -> TinyModel:
    try:
        return MODELS[name]
    except KeyError:
        from quant.errors import UsageError
        raise UsageError(f"unknown reference model {name!r}; known: {', '.join(MODELS)}") from None


def weights(name: str) -> list[Path]:
    """The committed weight files of a model (what ``train-tiny --model NAME`` writes)."""
    from . import a14b_tiny, qwen_tiny, tiny_model
    if name == "wan21-t2v-tiny":
        return [tiny_model.WEIGHTS]
    if name in qwen_tiny.NAMES:
        return [qwen_tiny.weights_path(name)]
    if name == a14b_tiny.NAME:
        return [a14b_tiny.weights_path(e) for e in a14b_tiny.EXPERTS]
    get(name)
    return []


def _cache_dir() -> Path:
    from harness.comfy.server import cache_root
    d = cache_root() / "render-models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _fp32_copy(src: Path, log=None) -> Path:
    import torch
    from quant.safetensors_io import AtomicWriter, SafetensorsFile, dtype_name
    from harness.verify.record import sha256_file
    p = _cache_dir() / f"{src.stem}-fp32-{sha256_file(src)[:12]}.safetensors"
    if not p.is_file():
        if log:
            log(f"making the fp32 copy of {src.name}")
        with SafetensorsFile(src) as f:
            names = list(f.keys())
            entries = [(n, dtype_name(torch.float32), tuple(f.info(n).shape)) for n in names]
            with AtomicWriter(p, entries, dict(f.metadata) or None) as w:
                for n in names:
                    w.write(n, f.get(n).to(torch.float32).contiguous())
    return p


def sources(name: str, log=None) -> dict[str, Path]:
    """Slot -> the source checkpoint the demo / render tests convert (made once into the cache):
    the WAN models as fp32 copies of the committed bf16 weights; the Qwen models as their real-width
    expansion in bf16 (the committed core's values exactly; 760 MB, so not fp32)."""
    from . import qwen_tiny
    m = get(name)
    missing = [p for p in weights(name) if not p.is_file()]
    if missing:
        from harness.comfy.errors import ComfyError
        raise ComfyError(f"the trained weights of {name} are missing ({missing[0]}); run "
                         f"quantgate train-tiny --model {name}")
    if name == "wan21-t2v-tiny":
        from . import tiny_model
        return {"model": _fp32_copy(tiny_model.WEIGHTS, log)}
    if name in qwen_tiny.NAMES:
        from harness.verify.record import sha256_file
        core = weights(name)[0]
        p = _cache_dir() / f"{m.stem}-bf16-{sha256_file(core)[:12]}.safetensors"
        if not p.is_file():
            if log:
                log(f"expanding the {name} core to the real Qwen-Image width (760 MB, once)")
            qwen_tiny.write_full(core, p)
        return {"model": p}
    return {slot: _fp32_copy(w, log) for slot, w in zip(m.slots, weights(name))}


# (background, box) colours of the edit workflow's reference image, 0xRRGGBB
EDIT_COLOURS = ((0x1F3A8C, 0xF2C230), (0xE8E0D0, 0x8C1F2A), (0x2E7D32, 0xF5F5F5), (0x101010, 0x40C0E0))


def template_values(template: str, values: dict) -> dict:
    """Values of a built-in template's own placeholders that the gate policy does not set (derived
    from the plan where they depend on it): the A14B switch step, the edit workflow's reference image."""
    out = {}
    if template == "wan22_a14b_t2v_smoke":
        from .a14b_tiny import switch_step
        steps = int(values.get("steps", 6))
        try:
            out["switch_step"] = switch_step(steps)
        except StopIteration:       # very few steps (the nightly's 2-step timing): all above the boundary, so
            out["switch_step"] = steps          # the high-noise expert samples them all, the low-noise has none
    elif template == "qwen_image_edit_smoke":
        # the reference follows the sampler seed (the gate's control seed gets another reference, so
        # the control can score low although the edit barely depends on the noise)
        import random
        w, h, seed = int(values.get("width", 64)), int(values.get("height", 64)), int(values.get("seed", 0))
        r = random.Random(seed)
        box = min(w, h) // 2
        bg, fg = r.choice(EDIT_COLOURS)
        out.update(ref_bg=bg, ref_fg=fg, ref_box=box, ref_x=r.randrange(0, w - box + 1), ref_y=r.randrange(0, h - box + 1))
    return {k: v for k, v in out.items() if k not in values}
