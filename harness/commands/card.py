"""``quantgate card GATE_OUT_DIR -o CARD_DIR``: a Hugging Face model card (README.md + render PNGs) from a gate run."""
from __future__ import annotations

from pathlib import Path


def register(sub):
    from harness.card import PIPELINE_TAGS
    p = sub.add_parser(
        "card", help="model card (Hub README.md with YAML front matter + render PNGs) from a gate run",
        description="Write a Hugging Face Hub model card for one file of a render gate run: README.md with YAML "
                    "front matter (tags incl. comfyui and the format, base_model, pipeline_tag; checked offline "
                    "with huggingface_hub's ModelCard), the format gate's summary, per ComfyUI version the verdict "
                    "and min/mean SSIM with the threshold, every render as source | file | difference PNG, the "
                    "exact workflow, seeds, sizes, sampler, activation policy, both sha256, the versions, and what "
                    "the file does not claim. Everything comes from the gate record; the same gate folder always "
                    "gives the same card. Exit 0 written, 2 bad input.")
    p.add_argument("gate_dir", metavar="GATE_OUT_DIR",
                   help="folder written by `quantgate gate --out` (one ComfyUI or a version matrix) or `quantgate demo`")
    p.add_argument("-o", "--out", required=True, metavar="CARD_DIR", help="where README.md, images/ and "
                   "workflow.json go (upload this folder's files beside the checkpoint)")
    p.add_argument("--candidate", metavar="LABEL|FILE",
                   help="which checked file the card is for (label or file name; needed when the run checked several)")
    p.add_argument("--base-model", metavar="REPO_ID", help="Hub repo id of the source model (front matter base_model)")
    p.add_argument("--pipeline-tag", choices=PIPELINE_TAGS,
                   help="front matter pipeline_tag (default: text-to-video for a video workflow, else text-to-image)")
    p.add_argument("--license", metavar="ID", help="front matter license (e.g. apache-2.0; the source model's)")
    p.add_argument("--title", help="the card's heading (default: the file name)")
    p.add_argument("--force", action="store_true", help="replace an existing card's files")
    p.set_defaults(func=run)


def run(args) -> int:
    from harness.card import build_card, write_card
    card = build_card(args.gate_dir, args.candidate, base_model=args.base_model, pipeline_tag=args.pipeline_tag,
                      license=args.license, title=args.title)
    readme = write_card(card, Path(args.out), force=args.force)
    n_img = sum(1 for k in card.files if k.endswith(".png"))
    print(f"card for {card.label}: {readme} ({n_img} render images, front matter tags "
          f"{', '.join(card.data.get('tags', []))})")
    return 0
