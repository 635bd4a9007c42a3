"""API-format workflows: the shipped templates (``harness/workflows/*.json``, placeholders such as
``"{{seed}}"``) and users' own API-format workflows (the node that takes the checkpoint is named).

A string value that is exactly ``"{{name}}"`` is replaced by the value itself (keeping its type, so
``"{{seed}}"`` becomes an int); ``{{name}}`` inside a longer string is replaced textually.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from quant.errors import InputError, UsageError

WORKFLOWS_DIR = Path(__file__).resolve().parent.parent / "workflows"
DEFAULT_TEMPLATE = "wan21_t2v_smoke"
_PH = re.compile(r"\{\{(\w+)\}\}")
MODEL_INPUTS = ("unet_name", "ckpt_name", "model_name", "model_path")
SEED_INPUTS = ("seed", "noise_seed")
BUILTIN_VALUES = ("wan22_a14b_t2v_smoke", "qwen_image_edit_smoke")


def template_path(name: str) -> Path:
    p = WORKFLOWS_DIR / f"{name}.json"
    if not p.is_file():
        known = ", ".join(sorted(f.stem for f in WORKFLOWS_DIR.glob("*.json")))
        raise UsageError(f"unknown workflow template {name!r}; known: {known}")
    return p


def load(path_or_name) -> dict:
    p = Path(path_or_name)
    if not p.suffix and not p.exists():
        p = template_path(str(path_or_name))
    from quant.inputs import workflow_json        # the one validated loader of workflow JSON (issue 20)
    _, wf, _ = workflow_json(p, api_only=True)
    return wf


def placeholders(wf: dict) -> set[str]:
    return set(_PH.findall(json.dumps(wf)))


def fill(wf: dict, values: dict) -> dict:
    def sub(o):
        if isinstance(o, dict):
            return {k: sub(v) for k, v in o.items()}
        if isinstance(o, list):
            return [sub(v) for v in o]
        if isinstance(o, str):
            m = _PH.fullmatch(o)
            if m and m.group(1) in values:
                return values[m.group(1)]
            return _PH.sub(lambda mm: str(values.get(mm.group(1), mm.group(0))), o)
        return o
    return sub(copy.deepcopy(wf))


class Workflow:
    """A workflow plus how to point it at a model and a seed/size."""

    def __init__(self, wf: dict, model_node: str | None = None, source: str = DEFAULT_TEMPLATE):
        self.wf = wf
        self.source = source
        self.holes = placeholders(wf)
        self.model_node = model_node
        if model_node is not None:
            if str(model_node) not in wf:
                raise UsageError(f"--model-node {model_node}: the workflow has no node {model_node!r} "
                                 f"(nodes: {', '.join(list(wf)[:20])})")
            self.model_input = next((k for k in MODEL_INPUTS if k in wf[str(model_node)].get("inputs", {})), None)
            if self.model_input is None:
                raise UsageError(f"--model-node {model_node} ({wf[str(model_node)]['class_type']}) has no model "
                                 f"file input ({'/'.join(MODEL_INPUTS)})")
        elif "model" not in self.holes:
            raise UsageError("the workflow has no {{model}} placeholder; name the node that loads the checkpoint "
                             "with --model-node ID")

    @classmethod
    def from_arg(cls, workflow: str | None, model_node: str | None) -> "Workflow":
        if workflow is None:
            return cls(load(DEFAULT_TEMPLATE), model_node, DEFAULT_TEMPLATE)
        return cls(load(workflow), model_node, str(workflow))

    @property
    def is_template(self) -> bool:
        return {"seed", "width", "height"} <= self.holes

    def build(self, model: str, seed: int, width: int, height: int, settings: dict, prefix: str) -> dict:
        vals = dict(settings)
        vals.update(model=model, seed=seed, width=width, height=height, prefix=prefix)
        vals.setdefault("cond_seed", 1)
        vals.setdefault("neg_seed", 2)
        if self.source in BUILTIN_VALUES:       # a built-in template's own placeholders (A14B switch, edit reference)
            from harness.train.registry import template_values
            vals.update(template_values(self.source, vals))
        wf = fill(self.wf, vals)
        if self.model_node is not None:
            wf[str(self.model_node)]["inputs"][self.model_input] = model
        if "seed" not in self.holes:       # a user's workflow: set every sampler seed
            for node in wf.values():
                for k in SEED_INPUTS:
                    if isinstance(node.get("inputs", {}).get(k), int):
                        node["inputs"][k] = seed
        if "width" not in self.holes:      # ...and every latent size that is a plain number
            for node in wf.values():
                inp = node.get("inputs", {})
                if isinstance(inp.get("width"), int) and isinstance(inp.get("height"), int):
                    inp["width"], inp["height"] = width, height
        left = placeholders(wf)
        if left:
            raise UsageError(f"workflow placeholders without a value: {', '.join(sorted(left))}")
        return wf
