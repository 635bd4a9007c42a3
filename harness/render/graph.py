"""Insert quantgate's activation nodes into an API-format workflow (a dict of nodes): a node that
takes the loaded MODEL and hands on a wrapped MODEL goes between the model loader and everything that
used the loader's MODEL output. Used by the render gate (activation emulation) and by activation
collection (harness.activations), which renders through the render gate's session."""
from __future__ import annotations

import copy

from quant.errors import UsageError

from .workflow import MODEL_INPUTS

IMAGE_SINKS = ("SaveImage", "PreviewImage", "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveWEBM", "SaveVideo")


def model_loader(wf: dict, model_node: str | None, model_name: str | None = None) -> str:
    """Id of the node that loads the diffusion model (``--model-node``, or the one whose model input
    holds ``model_name``)."""
    if model_node is not None:
        return str(model_node)
    for nid, node in wf.items():
        inp = node.get("inputs", {})
        if any(inp.get(k) == model_name for k in MODEL_INPUTS):
            return str(nid)
    raise UsageError("cannot tell which node loads the model; pass --model-node ID")


def _fresh_id(wf: dict, base: str) -> str:
    i, nid = 0, base
    while nid in wf:
        i += 1
        nid = f"{base}{i}"
    return nid


def insert_model_node(wf: dict, loader: str, class_type: str, inputs: dict, base_id: str) -> tuple[dict, str]:
    """A copy of ``wf`` where node ``class_type`` (``model`` input = the loader's output 0) feeds every
    input that used the loader's output 0. Returns (workflow, new node id)."""
    wf = copy.deepcopy(wf)
    if loader not in wf:
        raise UsageError(f"the workflow has no node {loader!r}")
    nid = _fresh_id(wf, base_id)
    users = 0
    for node in wf.values():
        for k, v in node.get("inputs", {}).items():
            if isinstance(v, list) and len(v) == 2 and str(v[0]) == loader and v[1] == 0:
                node["inputs"][k] = [nid, 0]
                users += 1
    if users == 0:
        raise UsageError(f"nothing in the workflow uses the MODEL of node {loader!r}")
    wf[nid] = {"class_type": class_type, "inputs": {"model": [loader, 0], **inputs}}
    return wf, nid


def sampling_output(wf: dict) -> list:
    """A link to something produced after sampling (the images an image sink saves), to order the
    calibration save after it."""
    for nid in sorted(wf, key=str):
        node = wf[nid]
        if node.get("class_type") in IMAGE_SINKS:
            v = node.get("inputs", {}).get("images")
            if isinstance(v, list) and len(v) == 2:
                return v
    for nid in sorted(wf, key=str):
        if "Sampler" in str(wf[nid].get("class_type", "")):
            return [nid, 0]
    raise UsageError("the workflow has no image output (SaveImage/PreviewImage) or sampler to calibrate with")


def with_calibration(wf: dict, loader: str, *, bins: int, sample_rows: int, prefix: str) -> dict:
    wf, cal = insert_model_node(wf, loader, "QGCalibrate", {"bins": int(bins), "sample_rows": int(sample_rows)},
                                "qg_calibrate")
    after = sampling_output(wf)
    sid = _fresh_id(wf, "qg_calibration_save")
    wf[sid] = {"class_type": "QGCalibrationSave",
               "inputs": {"calibration": [cal, 1], "after": after, "filename_prefix": prefix}}
    return wf


def with_emulation(wf: dict, loader: str, policy_json: str) -> dict:
    wf, _ = insert_model_node(wf, loader, "QGActivationEmulation", {"policy": policy_json}, "qg_act_emulation")
    return wf
