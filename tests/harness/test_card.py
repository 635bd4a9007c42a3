"""`quantgate card`: a Hub model card from a real render gate run (the session's demo candidate, thin WAN 2.1
-> fp8, rendered in the embedded ComfyUI by the render plugin's ``render_gate_record``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from harness.card import build_card, write_card
from quant.errors import InputError, UsageError


@pytest.fixture(scope="module")
def gate_dir(render_gate_record) -> Path:
    d = Path(render_gate_record["_out"])
    assert (d / "gate.json").is_file()
    return d


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_card_is_complete_valid_and_deterministic(gate_dir, tmp_path):
    from huggingface_hub import ModelCard
    rec = json.loads((gate_dir / "gate.json").read_text())
    cand = rec["candidates"][0]
    card = build_card(gate_dir, base_model="Wan-AI/Wan2.1-T2V-1.3B")
    write_card(card, tmp_path / "a")
    write_card(build_card(gate_dir, base_model="Wan-AI/Wan2.1-T2V-1.3B"), tmp_path / "b")
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and "README.md" in a                      # same gate run -> byte-identical card

    text = a["README.md"].decode()
    parsed = ModelCard(text, ignore_metadata_errors=False)       # the Hub's own parser, offline
    meta = parsed.data.to_dict()
    assert {"comfyui", cand["format"]} <= set(meta["tags"])
    assert meta["base_model"] == "Wan-AI/Wan2.1-T2V-1.3B" and meta["pipeline_tag"] == "text-to-video"
    assert cand["sha256"] in text and rec["source"]["sha256"] in text
    for heading in ("## Format gate", "## Render gate per ComfyUI version", "## Renders", "## How it was rendered",
                    "## Versions", "## What this file does not claim"):
        assert heading in text, heading
    ss = [r["ssim"] for r in rec["renders"] if r["role"] == "candidate"]
    row = (f"| {rec['comfyui']['version']} | embedded | file | **{cand['verdict'].upper()}** | "
           f"{min(ss):.4f} | {np.mean(ss):.4f} | {cand['threshold']} | {len(ss)} |")
    assert row in text
    assert f"| seeds | {', '.join(map(str, rec['seeds']))} |" in text
    assert f"| sampler | {rec['workflow']['settings']['sampler']} |" in text
    assert f"| quantgate | {rec['tool']['version']} |" in text
    assert f"| comfy-kitchen (format gate's reference) | {rec['tool']['comfy_kitchen']} |" in text
    assert rec["comfyui"]["system"]["pytorch_version"] in text
    assert json.loads(a["workflow.json"]) == rec["workflow"]["example_prompt"]

    # one triptych per candidate render: source | candidate | difference, rebuilt from the gate's own PNGs
    from PIL import Image

    from harness.render import score
    pngs = sorted(k for k in a if k.endswith(".png"))
    assert len(pngs) == len(ss) == len(rec["seeds"]) * len(rec["sizes"])
    r0 = next(r for r in rec["renders"] if r["role"] == "candidate")
    key = f"{r0['seed']}/{r0['width']}x{r0['height']}"
    src = np.asarray(Image.open(gate_dir / rec["images"]["source"][key]).convert("RGB"))
    cnd = np.asarray(Image.open(gate_dir / rec["images"]["candidates"][cand["label"]][key]).convert("RGB"))
    rel = next(k for k in pngs if k.endswith(f"seed{r0['seed']}_{r0['width']}x{r0['height']}.png"))
    trip = np.asarray(Image.open(tmp_path / "a" / rel).convert("RGB"))
    k = trip.shape[0] // r0["height"]
    w = r0["width"] * k
    assert k >= 2 and trip.shape == (r0["height"] * k, 3 * w + 12, 3)
    assert np.array_equal(trip[::k, :w:k], src)
    assert np.array_equal(trip[::k, w + 6:2 * w + 6:k], cnd)
    assert np.array_equal(trip[::k, 2 * w + 12::k], score.heatmap(src, cnd))
    assert f"]({rel})" in text


def test_card_markdown_renders_like_the_hub(gate_dir, tmp_path):
    """GitHub-flavoured markdown (the Hub's): the tables are tables and every image the card shows exists."""
    mdit = pytest.importorskip("markdown_it")
    write_card(build_card(gate_dir), tmp_path)
    body = (tmp_path / "README.md").read_text().split("---\n", 2)[2]
    html = mdit.MarkdownIt("commonmark", {"html": True}).enable("table").render(body)
    assert html.count("<table>") >= 5
    import re
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert srcs and all((tmp_path / s).is_file() for s in srcs)
    assert "<details>" in html


def test_card_refuses_bad_gate_folders(gate_dir, tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        build_card(tmp_path / "nothing")
    bad = tmp_path / "bad"
    shutil.copytree(gate_dir, bad)
    rec = json.loads((bad / "gate.json").read_text())
    rec["candidates"][0]["sha256"] = "not-a-hash"
    (bad / "gate.json").write_text(json.dumps(rec))
    with pytest.raises(InputError, match=r"candidates\.0\.sha256"):
        build_card(bad)
    rec = json.loads((gate_dir / "gate.json").read_text())
    lab = rec["candidates"][0]["label"]
    key = next(iter(rec["images"]["candidates"][lab]))
    rec["images"]["candidates"][lab][key] = "../../etc/passwd.png"
    (bad / "gate.json").write_text(json.dumps(rec))
    with pytest.raises(InputError, match="not a .png inside the gate folder"):
        build_card(bad)
    with pytest.raises(UsageError, match="no candidate"):
        build_card(gate_dir, "nope")
    with pytest.raises(UsageError, match="repo id"):
        build_card(gate_dir, base_model="not a repo/id/at all")


def test_card_cli_force_rules_and_never_over_an_input(gate_dir, tmp_path, cli):
    out = tmp_path / "card"
    r = cli("card", gate_dir, "-o", out)
    assert r.returncode == 0 and (out / "README.md").is_file(), r.stderr
    before = _files(out)
    r = cli("card", gate_dir, "-o", out)
    assert r.returncode == 2 and "pass --force" in r.stderr and "Traceback" not in r.stderr
    assert _files(out) == before
    assert cli("card", gate_dir, "-o", out, "--force").returncode == 0
    # a README.md that is the gate record itself (a link): refused, the record untouched
    trap = tmp_path / "trap"
    trap.mkdir()
    (trap / "README.md").symlink_to(gate_dir / "gate.json")
    rec_bytes = (gate_dir / "gate.json").read_bytes()
    r = cli("card", gate_dir, "-o", trap, "--force")
    assert r.returncode == 2 and "overwrite the input" in r.stderr, r.stderr
    assert (gate_dir / "gate.json").read_bytes() == rec_bytes
    assert sorted(p.name for p in trap.iterdir()) == ["README.md"]      # nothing written beside it either


def test_card_from_a_version_matrix_folder(gate_dir, tmp_path):
    """A matrix folder (``gate --comfy-root A --comfy-root B``): one row and one render section per run. Built
    the way ``gate`` lays it out, from the session's real run twice (the same server, as a matrix of two)."""
    from harness.render import matrix
    m = tmp_path / "matrix"
    runs = []
    for sub in ("comfyui-x", "comfyui-x-2"):
        shutil.copytree(gate_dir, m / sub)
        rec = json.loads((m / sub / "gate.json").read_text())
        runs.append({"target": sub, "version": rec["comfyui"]["version"], "record": rec,
                     "report": str(m / sub / "report.html")})
    matrix.write(matrix.summarize(runs), m)
    card = build_card(m)
    version = runs[0]["version"]
    assert card.readme.count(f"| {version} | embedded | file |") == 2
    assert card.readme.count(f"### ComfyUI {version}") == 2
    n = len([r for r in runs[0]["record"]["renders"] if r["role"] == "candidate"])
    assert len([k for k in card.files if k.endswith(".png")]) == 2 * n
    # the runs of a matrix must be about the same file
    rec = json.loads((m / "comfyui-x-2" / "gate.json").read_text())
    rec["candidates"][0]["sha256"] = "0" * 64
    (m / "comfyui-x-2" / "gate.json").write_text(json.dumps(rec))
    with pytest.raises(InputError, match="checked different files"):
        build_card(m)


@pytest.mark.skipif(not shutil.which("chromium"), reason="no chromium on this machine (Debian package chromium)")
def test_card_preview_in_headless_chromium(gate_dir, tmp_path):
    """benchmarks/card_preview.py: the card read back by huggingface_hub and shown in a real browser the way the Hub
    renders a card; a card without the comfyui tag is refused."""
    import subprocess
    import sys

    from PIL import Image
    root = Path(__file__).resolve().parents[2]
    write_card(build_card(gate_dir), tmp_path / "card")
    shot = tmp_path / "card.png"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "card_preview.py"), tmp_path / "card", "-o", shot],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "card valid" in r.stdout, r.stdout + r.stderr
    im = np.asarray(Image.open(shot).convert("RGB"))
    assert im.shape[1] == 1000 and im.shape[0] > 1500                  # the whole card, not an empty page
    colourful = (im.max(axis=2).astype(int) - im.min(axis=2)) > 60      # the renders (red / yellow / blue)
    assert colourful.sum() > 20000, colourful.sum()

    readme = tmp_path / "card" / "README.md"
    readme.write_text(readme.read_text().replace("- comfyui\n", "", 1))
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "card_preview.py"), tmp_path / "card", "-o", shot],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "do not include comfyui" in r.stderr, r.stdout + r.stderr
