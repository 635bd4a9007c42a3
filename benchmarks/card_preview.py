"""A model card (``quantgate card`` output) as the Hugging Face Hub shows it, screenshotted in a real browser.

    python benchmarks/card_preview.py CARD_DIR -o benchmarks/results/card-....png [--chromium /usr/bin/chromium]

1. The card is read back offline with ``huggingface_hub.ModelCard.load`` (front matter parsed into
   ``ModelCardData``); the tags must include ``comfyui``.
2. The body is rendered like the Hub renders a model card's README.md: GitHub-flavoured markdown (CommonMark +
   tables + strikethrough, inline HTML allowed, markdown-it-py), relative image links resolved against the card
   folder, the front matter not shown as text but as the tag / metadata chips above the card. The style sheet
   only imitates the Hub's look (it is not the Hub's own renderer).
3. Headless Chromium (``--headless --screenshot``, no network: the page has no remote resources) takes a tall
   screenshot; the blank rows under the card are cropped off with Pillow.

Nothing is written into CARD_DIR; the HTML page lies in a temporary folder."""
from __future__ import annotations

import argparse
import html
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CSS = """body{font:15px/1.6 -apple-system,'Source Sans Pro',system-ui,sans-serif;max-width:920px;margin:24px auto;
color:#111827;padding:0 16px}
.chip{background:#f3f4f6;border:1px solid #e5e7eb;border-radius:6px;padding:1px 8px;margin:2px;font-size:13px;
display:inline-block}.meta{background:#eef2ff;border-color:#c7d2fe}
table{border-collapse:collapse;margin:8px 0;display:block;overflow:auto}td,th{border:1px solid #e5e7eb;
padding:4px 10px;text-align:left;vertical-align:middle}th{background:#f9fafb}
code{background:#f3f4f6;padding:1px 4px;border-radius:4px;font-size:13px}pre{background:#f9fafb;padding:10px;
overflow:auto;white-space:pre-wrap}pre code{background:none}
h1{font-size:28px}h2{border-bottom:1px solid #e5e7eb;padding-bottom:4px}img{max-width:100%;image-rendering:pixelated}
"""


def validate(card_dir: Path):
    """The card as huggingface_hub reads it (offline): (ModelCardData as dict, markdown body)."""
    from huggingface_hub import ModelCard
    card = ModelCard.load(card_dir / "README.md")
    data = card.data.to_dict()
    if "comfyui" not in (data.get("tags") or []):
        raise SystemExit(f"{card_dir / 'README.md'}: the card's tags do not include comfyui: {data.get('tags')}")
    return data, card.text


def page(card_dir: Path, data: dict, body: str) -> str:
    from markdown_it import MarkdownIt
    md = MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"])
    meta = "".join(f"<span class='chip meta'>{k}: {html.escape(str(data[k]))}</span>"
                   for k in ("pipeline_tag", "base_model", "license", "library_name") if data.get(k))
    tags = "".join(f"<span class=chip>{html.escape(str(t))}</span>" for t in data.get("tags") or [])
    return (f"<!doctype html><meta charset=utf-8><base href='{card_dir.resolve().as_uri()}/'><style>{CSS}</style>"
            f"<div>{meta}<br>{tags}</div><hr>{md.render(body)}")


def screenshot(html_path: Path, out: Path, chromium: str, width: int, height: int) -> tuple[int, int]:
    from PIL import Image, ImageChops
    with tempfile.TemporaryDirectory(prefix="qg-card-chromium-") as prof:
        raw = Path(prof) / "shot.png"
        r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                            "--disable-background-networking", "--no-first-run", f"--user-data-dir={prof}/profile",
                            "--allow-file-access-from-files", f"--window-size={width},{height}",
                            f"--screenshot={raw}", html_path.as_uri()],
                           capture_output=True, text=True, timeout=180)
        if r.returncode != 0 or not raw.is_file():
            raise SystemExit(f"chromium failed ({r.returncode}): {r.stderr[-1500:]}")
        im = Image.open(raw).convert("RGB")
        bbox = ImageChops.difference(im, Image.new("RGB", im.size, (255, 255, 255))).getbbox()
        bottom = min(im.height, (bbox[3] if bbox else im.height) + 24)
        im = im.crop((0, 0, im.width, bottom))
        out.parent.mkdir(parents=True, exist_ok=True)
        im.save(out, optimize=True)
        return im.size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("card_dir", type=Path, help="a folder written by `quantgate card`")
    ap.add_argument("-o", "--out", type=Path, required=True, help="PNG to write")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--width", type=int, default=1000)
    ap.add_argument("--height", type=int, default=7000, help="browser window height before cropping")
    a = ap.parse_args(argv)
    data, body = validate(a.card_dir)
    with tempfile.TemporaryDirectory(prefix="qg-card-preview-") as d:
        p = Path(d) / "card.html"
        p.write_text(page(a.card_dir, data, body), encoding="utf-8")
        w, h = screenshot(p, a.out, a.chromium, a.width, a.height)
    print(f"{a.out}: {w}x{h} px; card valid (huggingface_hub ModelCard): tags {data.get('tags')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
