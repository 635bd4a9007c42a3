"""One validated loader per input kind (issue 20). Every reader of a kind goes through its loader here;
every failure is one :class:`~quant.errors.InputError` line naming the file (or URL) and the field, exit 2.

=====================  =========================================  ====================================
input kind             loader                                     schema
=====================  =========================================  ====================================
calibration JSON       :func:`calibration_json`                   ``calibration.CalibrationFile``
--input-scales JSON    :func:`input_scales_json`                  ``calibration._Scales``
activation files       :func:`activation_samples` (+ run/index    dtypes, shapes, metadata records
                       records: ``calibration_run``,
                       ``samples_index``)
preset TOML            :func:`preset_toml`                        ``presets.Preset``
policy TOML            :func:`policy_toml`                        ``presets.Policy``
workflow JSON          :func:`workflow_json`                      ``workflows.UiWorkflow/ApiWorkflow``
nightly records        :func:`nightly_record`                     ``workflows.NightlyRecord``
layout manifests       :func:`manifest_json`                      ``manifests.Manifest``
safetensors index      :func:`safetensors_index`                  ``index.SafetensorsIndex``
calibration record     :func:`file_calibration_record` (a file's  ``calibration.FileCalibrationRecord``
                       ``quantgate.calibration`` metadata)
server answers         :func:`server.answer`                      ``server.*``
=====================  =========================================  ====================================

Parsing is bounded (:mod:`quant.inputs.bounded`: size, digits per number, depth, no NaN/Infinity, no
lone surrogates, no FIFOs); schemas are strict pydantic v2 models (:mod:`quant.inputs.schema`).
"""
from __future__ import annotations

from .bounded import load_json, load_toml, parse_json, parse_toml, read_bytes
from .index import safetensors_index
from .manifests import manifest_json
from .calibration import calibration_json, calibration_run, file_calibration_record, input_scales_json, \
    samples_index
from .presets import policy_toml, preset_toml
from .workflows import nightly_record, parse_workflow, workflow_json


def activation_samples(path):
    from .activations import activation_samples as _a
    return _a(path)


__all__ = ["read_bytes", "parse_json", "parse_toml", "load_json", "load_toml", "calibration_json",
           "input_scales_json", "calibration_run", "samples_index", "preset_toml", "policy_toml",
           "workflow_json", "parse_workflow", "nightly_record", "activation_samples", "manifest_json",
           "safetensors_index",
           "file_calibration_record"]
