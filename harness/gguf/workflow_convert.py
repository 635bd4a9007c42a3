"""Rewrite ComfyUI workflows from GGUF loader nodes (ComfyUI-GGUF) to ComfyUI's core loaders.

Both workflow formats are handled:

* **UI format** (what the browser saves: ``{"nodes": [...], "links": [...], ...}``; subgraphs under
  ``definitions.subgraphs`` too): a node's ``type``, its ``widgets_values`` (re-laid out for the core
  loader), ``properties["Node name for S&R"]`` and its unlinked extra outputs change; node ids, links,
  positions and every other node stay as they are.
* **API format** (``{"<id>": {"class_type": ..., "inputs": {...}}}``): ``class_type`` and ``inputs``.

File names are replaced through ``--map OLD=NEW`` (any string value equal to OLD, or ending in
``/OLD``, in any node). A GGUF loader that still names a ``.gguf`` file with no mapping, a GGUF node
whose widgets are not what ComfyUI-GGUF writes, or a link from an output the core loader does not have
is refused: the whole run then changes nothing. Writes are atomic (temp file, fsync, rename) and the
original bytes are kept beside each file as ``<file>.quantgate-backup`` (``rollback`` restores them).
"""
from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from quant.errors import InputError, UsageError

BACKUP_SUFFIX = ".quantgate-backup"


@dataclass(frozen=True)
class LoaderRule:
    core: str                       # core node class
    gguf_widgets: tuple[str, ...]   # widgets_values order of the GGUF node (UI format)
    core_widgets: tuple[str, ...]   # widgets_values order of the core node (UI format)
    defaults: tuple[tuple[str, object], ...]   # core widgets the GGUF node does not have
    core_title: str
    outputs: int = 1                # outputs of the core node


_UNET_DEFAULTS = (("weight_dtype", "default"),)
_CLIP_DEFAULTS = (("device", "default"),)

# ComfyUI-GGUF's nodes (city96/ComfyUI-GGUF nodes.py) -> the core loader (ComfyUI nodes.py)
RULES: dict[str, LoaderRule] = {
    "UnetLoaderGGUF": LoaderRule("UNETLoader", ("unet_name",), ("unet_name", "weight_dtype"), _UNET_DEFAULTS,
                                 "Load Diffusion Model"),
    "UnetLoaderGGUFAdvanced": LoaderRule("UNETLoader", ("unet_name", "dequant_dtype", "patch_dtype", "patch_on_device"),
                                         ("unet_name", "weight_dtype"), _UNET_DEFAULTS, "Load Diffusion Model"),
    "CLIPLoaderGGUF": LoaderRule("CLIPLoader", ("clip_name", "type"), ("clip_name", "type", "device"),
                                 _CLIP_DEFAULTS, "Load CLIP"),
    "DualCLIPLoaderGGUF": LoaderRule("DualCLIPLoader", ("clip_name1", "clip_name2", "type"),
                                     ("clip_name1", "clip_name2", "type", "device"), _CLIP_DEFAULTS, "DualCLIPLoader"),
    "TripleCLIPLoaderGGUF": LoaderRule("TripleCLIPLoader", ("clip_name1", "clip_name2", "clip_name3"),
                                       ("clip_name1", "clip_name2", "clip_name3"), (), "TripleCLIPLoader"),
    "QuadrupleCLIPLoaderGGUF": LoaderRule("QuadrupleCLIPLoader",
                                          ("clip_name1", "clip_name2", "clip_name3", "clip_name4"),
                                          ("clip_name1", "clip_name2", "clip_name3", "clip_name4"), (),
                                          "QuadrupleCLIPLoader"),
}
# widgets of GGUF nodes that name a model file
FILE_WIDGETS = ("unet_name", "clip_name", "clip_name1", "clip_name2", "clip_name3", "clip_name4")
# the titles ComfyUI-GGUF gives its nodes (replaced by the core title; a user's own title is kept)
GGUF_TITLES = {"Unet Loader (GGUF)", "Unet Loader (GGUF/Advanced)", "CLIPLoader (GGUF)", "DualCLIPLoader (GGUF)",
               "TripleCLIPLoader (GGUF)", "QuadrupleCLIPLoader (GGUF)"}


def parse_maps(items: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items or []:
        old, sep, new = str(it).partition("=")
        old, new = old.strip(), new.strip()
        if not sep or not old or not new:
            raise UsageError(f"--map {it!r}: expected OLD=NEW (file names as the workflow and the server list them)")
        if old in out and out[old] != new:
            raise UsageError(f"--map {old}: mapped twice ({out[old]} and {new})")
        out[old] = new
    return out


def _map_name(value, maps: dict[str, str]):
    """The new name for a file-name value (keeps a subfolder prefix), or None."""
    if not isinstance(value, str):
        return None
    if value in maps:
        return maps[value]
    for sep in ("/", "\\"):
        if sep in value:
            head, _, base = value.rpartition(sep)
            if base in maps:
                new = maps[base]
                return new if ("/" in new or "\\" in new) else head + sep + new
    return None


@dataclass
class Result:
    path: Path
    kind: str                         # "ui" | "api"
    original: bytes
    new_text: str | None = None       # None: nothing to change
    changes: list[str] = field(default_factory=list)
    used_maps: set[str] = field(default_factory=set)

    @property
    def changed(self) -> bool:
        return self.new_text is not None

    def diff(self) -> str:
        if not self.changed:
            return ""
        a = self.original.decode("utf-8").splitlines(keepends=True)
        b = self.new_text.splitlines(keepends=True)
        return "".join(difflib.unified_diff(a, b, f"a/{self.path.name}", f"b/{self.path.name}"))


# ---- reading ------------------------------------------------------------------------------------
def _style(text: str) -> dict:
    """json.dumps arguments that reproduce the file's own formatting (indent, separators)."""
    m = re.search(r"\n([ \t]+)\S", text)
    if m:
        ind = m.group(1)
        return {"indent": "\t" * len(ind) if ind.startswith("\t") else len(ind), "separators": (",", ": ")}
    if re.search(r'"\s*:\s', text):
        return {"separators": (", ", ": ")}
    return {"separators": (",", ":")}


def dump_like(obj, original_text: str) -> str:
    out = json.dumps(obj, ensure_ascii=False, **_style(original_text))
    if original_text.endswith("\n"):
        out += "\n"
    return out


def read_workflow(path: Path) -> tuple[bytes, object, str]:
    """-> (bytes, parsed JSON, kind "ui"/"api") through the one validated loader of workflow JSON
    (quant.inputs: bounded parsing, the fields quantgate reads typed); InputError for anything else."""
    from quant.inputs import workflow_json
    raw, obj, _ = workflow_json(path)
    return raw, obj, kind_of(obj, path)


def kind_of(obj, path) -> str:
    if isinstance(obj, dict) and isinstance(obj.get("nodes"), list) and "links" in obj:
        for n in _ui_nodes(obj, path):
            if not isinstance(n, dict) or "id" not in n or not isinstance(n.get("type"), str):
                raise InputError("UI workflow with a node that has no id/type; not a workflow quantgate understands", path)
        if not isinstance(obj.get("links"), list):
            raise InputError("UI workflow whose 'links' is not a list", path)
        return "ui"
    if isinstance(obj, dict) and obj and all(
            isinstance(n, dict) and isinstance(n.get("class_type"), str) and isinstance(n.get("inputs", {}), dict)
            for n in obj.values()):
        return "api"
    raise InputError("not a ComfyUI workflow (neither UI format {nodes, links} nor API format "
                     "{id: {class_type, inputs}})", path)


def _ui_nodes(obj: dict, path) -> list:
    nodes = list(obj.get("nodes") or [])
    subs = (obj.get("definitions") or {}).get("subgraphs") if isinstance(obj.get("definitions"), dict) else None
    for sg in subs or []:
        if not isinstance(sg, dict) or not isinstance(sg.get("nodes", []), list):
            raise InputError("UI workflow with a malformed subgraph definition", path)
        nodes.extend(sg.get("nodes", []))
    return nodes


# ---- converting ---------------------------------------------------------------------------------
def convert_file(path, maps: dict[str, str], weight_dtype: str = "default") -> Result:
    path = Path(path)
    raw, obj, kind = read_workflow(path)
    res = Result(path, kind, raw)
    if kind == "ui":
        _convert_ui(obj, maps, res, weight_dtype)
    else:
        _convert_api(obj, maps, res, weight_dtype)
    if res.changes:
        res.new_text = dump_like(obj, raw.decode("utf-8"))
    return res


def _refuse(res: Result, what: str):
    raise InputError(f"{what}; nothing was changed", res.path)


def _rename_value(value, maps, res: Result, where: str):
    new = _map_name(value, maps)
    if new is None or new == value:
        return value
    res.used_maps.add(value if value in maps else value.replace("\\", "/").rpartition("/")[2])
    res.changes.append(f"{where}: {value} -> {new}")
    return new


def _check_gguf_names(res, nid, cls, names: dict):
    for w, v in names.items():
        if isinstance(v, str) and v.lower().endswith(".gguf"):
            _refuse(res, f"node {nid} ({cls}) loads {v} and no --map {v}=NEW.safetensors was given")


def _convert_api(wf: dict, maps, res: Result, weight_dtype: str):
    used_outputs: dict[str, set[int]] = {}
    for nid, node in wf.items():
        for v in node.get("inputs", {}).values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[1], int):
                used_outputs.setdefault(str(v[0]), set()).add(v[1])
    for nid, node in wf.items():
        cls = node["class_type"]
        inputs = node.setdefault("inputs", {})
        for k in list(inputs):
            if isinstance(inputs[k], str):
                inputs[k] = _rename_value(inputs[k], maps, res, f"node {nid} {k}")
        rule = RULES.get(cls)
        if rule is None:
            continue
        extra = sorted(o for o in used_outputs.get(str(nid), ()) if o >= rule.outputs)
        if extra:
            _refuse(res, f"node {nid} ({cls}): output {extra[0]} is used, and {rule.core} has no such output")
        unknown = set(inputs) - set(rule.gguf_widgets)
        if unknown:
            _refuse(res, f"node {nid} ({cls}) has inputs ComfyUI-GGUF does not define: {', '.join(sorted(unknown))}")
        _check_gguf_names(res, nid, cls, {w: inputs.get(w) for w in FILE_WIDGETS if w in inputs})
        new_inputs = {w: inputs[w] for w in rule.core_widgets if w in inputs}
        if "weight_dtype" in rule.core_widgets:          # required by UNETLoader ("device" is optional)
            new_inputs.setdefault("weight_dtype", weight_dtype)
        node["class_type"] = rule.core
        node["inputs"] = new_inputs
        meta = node.get("_meta")
        if isinstance(meta, dict) and meta.get("title") in GGUF_TITLES:
            meta["title"] = rule.core_title
        res.changes.append(f"node {nid}: {cls} -> {rule.core}")


def _convert_ui(wf: dict, maps, res: Result, weight_dtype: str):
    nodes = _ui_nodes(wf, res.path)
    for node in nodes:
        nid, cls = node["id"], node["type"]
        wv = node.get("widgets_values")
        if isinstance(wv, list):
            for i, v in enumerate(wv):
                if isinstance(v, str):
                    wv[i] = _rename_value(v, maps, res, f"node {nid} widget {i}")
        elif isinstance(wv, dict):
            for k, v in list(wv.items()):
                if isinstance(v, str):
                    wv[k] = _rename_value(v, maps, res, f"node {nid} {k}")
        rule = RULES.get(cls)
        if rule is None:
            continue
        if not isinstance(wv, list) or len(wv) != len(rule.gguf_widgets):
            _refuse(res, f"node {nid} ({cls}) has widgets_values {json.dumps(wv)[:80]}, "
                         f"expected {len(rule.gguf_widgets)} values ({', '.join(rule.gguf_widgets)})")
        vals = dict(zip(rule.gguf_widgets, wv))
        _check_gguf_names(res, nid, cls, {w: vals[w] for w in FILE_WIDGETS if w in vals})
        # inputs: only widget-inputs for widgets the core node has (a linked extra widget cannot be kept)
        ins = node.get("inputs") or []
        if not isinstance(ins, list):
            _refuse(res, f"node {nid} ({cls}) has 'inputs' that is not a list")
        keep = []
        for i in ins:
            wname = (i.get("widget") or {}).get("name") if isinstance(i, dict) else None
            if wname is None and isinstance(i, dict):
                wname = i.get("name")
            if wname in rule.core_widgets:
                keep.append(i)
            elif isinstance(i, dict) and i.get("link") is not None:
                _refuse(res, f"node {nid} ({cls}): input {wname!r} is linked, and {rule.core} has no such input")
        outs = node.get("outputs") or []
        if not isinstance(outs, list):
            _refuse(res, f"node {nid} ({cls}) has 'outputs' that is not a list")
        for j, o in enumerate(outs[rule.outputs:], start=rule.outputs):
            if isinstance(o, dict) and o.get("links"):
                _refuse(res, f"node {nid} ({cls}): output {j} ({o.get('name')}) is linked, and {rule.core} "
                             "has no such output")
        defaults = dict(rule.defaults, weight_dtype=weight_dtype)
        node["widgets_values"] = [vals.get(w, defaults.get(w)) for w in rule.core_widgets]
        node["type"] = rule.core
        if "inputs" in node:
            node["inputs"] = keep
        if "outputs" in node:
            node["outputs"] = outs[:rule.outputs]
        props = node.get("properties")
        if isinstance(props, dict) and props.get("Node name for S&R") == cls:
            props["Node name for S&R"] = rule.core
        if node.get("title") in GGUF_TITLES:
            node["title"] = rule.core_title
        res.changes.append(f"node {nid}: {cls} -> {rule.core}")


# ---- files --------------------------------------------------------------------------------------
def workflow_files(target) -> list[Path]:
    p = Path(target)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.json") if f.is_file())
        if not files:
            raise InputError("no *.json workflow files in this directory", p)
        return files
    if not p.exists():
        raise InputError("no such file or directory", p)
    return [p]


def backup_path(p: Path) -> Path:
    return p.with_name(p.name + BACKUP_SUFFIX)


def atomic_write_bytes(path: Path, data: bytes, *, overwrite: bool = True, inputs=(), what: str = "workflow") -> None:
    """quantgate's one output path (quant.outputs: checked, temp beside it, fsync, an atomic commit, never
    onto a FIFO/device; ``overwrite=False``: refused if the name exists, also when it appears meanwhile),
    keeping the workflow file's permissions."""
    import stat as _stat

    from quant.outputs import atomic_file, check_output
    path = Path(path)
    check_output(path, inputs, overwrite=overwrite, what=what)
    try:
        mode = _stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    with atomic_file(path, buffering=-1) as f:
        f.write(data)
        if mode is not None:
            os.fchmod(f.fileno(), mode)


def convert_all(target, maps: dict[str, str], weight_dtype: str = "default") -> list[Result]:
    """Convert every workflow first (in memory); any refusal raises before anything is written."""
    results = []
    for f in workflow_files(target):
        if f.name.endswith(BACKUP_SUFFIX):
            continue
        r = convert_file(f, maps, weight_dtype)
        if r.changed and backup_path(f).exists():
            raise InputError(f"a backup {backup_path(f).name} already exists (an earlier conversion); run "
                             "'quantgate workflow rollback' first; nothing was changed", f)
        results.append(r)
    return results


def write_all(results: list[Result]) -> list[Path]:
    """Backup + atomic write of every changed file; on a failure, every file already written is restored."""
    done: list[Result] = []
    try:
        for r in results:
            if not r.changed:
                continue
            # a backup is never replaced: an earlier one holds the true original
            atomic_write_bytes(backup_path(r.path), r.original, overwrite=False, inputs=[r.path], what="workflow backup")
            done.append(r)
            atomic_write_bytes(r.path, r.new_text.encode("utf-8"))
    except BaseException:
        for r in done:
            try:
                atomic_write_bytes(r.path, r.original)
                backup_path(r.path).unlink(missing_ok=True)
            except OSError:
                pass
        raise
    return [r.path for r in done]


def rollback(target) -> list[Path]:
    """Restore each converted file from its backup (byte-exact), then remove the backup."""
    p = Path(target)
    if p.is_dir():
        pairs = [(b.with_name(b.name[: -len(BACKUP_SUFFIX)]), b) for b in sorted(p.rglob("*" + BACKUP_SUFFIX))]
        if not pairs:
            raise InputError(f"no {BACKUP_SUFFIX} files here: nothing to roll back", p)
    else:
        if p.name.endswith(BACKUP_SUFFIX):
            p = p.with_name(p.name[: -len(BACKUP_SUFFIX)])
        b = backup_path(p)
        if not b.is_file():
            raise InputError(f"no backup {b.name} beside it: nothing to roll back", p)
        pairs = [(p, b)]
    restored = []
    from quant.inputs import read_bytes
    for orig, b in pairs:
        data = read_bytes(b, what="workflow backup")
        atomic_write_bytes(orig, data)
        if orig.read_bytes() != data:
            raise InputError("restoring from the backup did not reproduce it byte-exactly; the backup was kept", orig)
        b.unlink()
        restored.append(orig)
    return restored
