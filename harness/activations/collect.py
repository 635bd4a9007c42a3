"""Drive a ComfyUI server through calibration runs and merge what the QGCalibrate node recorded into
one calibration JSON (schema ``quant.activations.statistics.SCHEMA``).

Every run is the user's workflow (or the built-in template) with ``QGCalibrate`` between the model
loader and its users and ``QGCalibrationSave`` after the images; the node's safetensors file comes
back over HTTP (/view), is parsed by quantgate's own safetensors reader, and merged: counts and sums
add, amax and per-channel amax take the maximum, log2 histograms add (percentiles come from the
merged histogram, 32 bins per octave: about 2 % resolution). Same seeds -> the same JSON (no clocks,
floats rounded to 7 significant digits).
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from quant import __version__ as TOOL_VERSION
from quant.activations.statistics import SCHEMA, percentile_key
from quant.errors import InputError
from quant.safetensors_io import SafetensorsFile

from harness.comfy.errors import ComfyError
from harness.render import graph

PERCENTILES = (99.0, 99.9, 99.99, 99.999)
RUN_SCHEMA = "quantgate.calibration-run/1"


def _r(v: float) -> float:
    return float(f"{float(v):.7g}")


@dataclass
class _Bin:
    calls: int = 0
    count: int = 0
    zeros: int = 0
    sum: float = 0.0
    sumsq: float = 0.0
    amax: float = 0.0
    hist: torch.Tensor | None = None

    def add(self, d: dict, hist: torch.Tensor | None):
        self.calls += int(d["calls"])
        self.count += int(d["count"])
        self.zeros += int(d["zeros"])
        self.sum += float(d["sum"])
        self.sumsq += float(d["sumsq"])
        self.amax = max(self.amax, float(d["amax"]))
        if hist is not None:
            self.hist = hist.clone() if self.hist is None else self.hist + hist


@dataclass
class _Layer:
    in_features: int
    bins: dict[int, _Bin] = field(default_factory=dict)
    chan_amax: torch.Tensor | None = None


@dataclass
class Merged:
    nbins: int = 0
    hist: dict | None = None
    layers: dict[str, _Layer] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)
    samples: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    sample_rows: dict[str, list[int]] = field(default_factory=dict)
    runs: int = 0
    model_calls: int = 0

    def add_run(self, f: SafetensorsFile, where: str) -> None:
        from quant.inputs import calibration_run
        text = f.metadata.get("quantgate_calibration", "")
        if f'"{RUN_SCHEMA}"' not in text:
            raise ComfyError(f"{where}: not a QGCalibrationSave file (is harness/custom_nodes/quantgate_calibration.py "
                             "the same version on the server?)")
        # the one validated loader of a run record (issue 20): every field typed, bins in range, finite numbers
        meta = calibration_run(text, where, error=ComfyError)
        if self.nbins and meta["bins"] != self.nbins:
            raise ComfyError(f"{where}: {meta['bins']} bins, earlier runs had {self.nbins}")
        self.nbins, self.hist = int(meta["bins"]), meta["hist"]
        self.runs += 1
        self.model_calls += int(meta.get("model_calls", 0))
        names = set(f.keys())
        nh = int(meta["hist"]["n"])

        def tensor(key: str, shape_ok):
            if key not in names:
                return None
            info = f.info(key)
            if not shape_ok(tuple(info.shape)) or info.dtype not in ("F32", "F16", "BF16", "I64"):
                raise ComfyError(f"{where}: tensor {key} is {info.dtype}{list(info.shape)[:4]}, not what the run "
                                 "record describes")
            return f.get(key)
        for i, (name, la) in enumerate(meta["layers"].items()):
            L = self.layers.get(name)
            if L is None:
                L = self.layers[name] = _Layer(int(la["in_features"]))
                self.order.append(name)
            if int(la["in_features"]) != L.in_features:
                raise ComfyError(f"{where}: layer {name[:80]!r} has {la['in_features']} inputs, earlier runs "
                                 f"{L.in_features}")
            for b, d in la["bins"].items():
                h = tensor(f"hist.{i}.{b}", lambda s: s == (nh,))
                L.bins.setdefault(int(b), _Bin()).add(d, h)
            ca = tensor(f"chan_amax.{i}", lambda s: s == (L.in_features,))
            if ca is not None:
                L.chan_amax = ca.clone() if L.chan_amax is None else torch.maximum(L.chan_amax, ca)
            x = tensor(f"samples.{i}", lambda s: len(s) == 2 and s[1] == L.in_features)
            if x is not None:
                rows = tensor(f"sample_rows.{i}", lambda s: len(s) == 1)
                if rows is None or int(rows.sum()) != x.shape[0] or bool((rows < 0).any()):
                    raise ComfyError(f"{where}: samples.{i} and sample_rows.{i} disagree")
                self.samples.setdefault(name, []).append(x)
                self.sample_rows.setdefault(name, []).extend(int(v) for v in rows.tolist())

    # -- statistics ---------------------------------------------------------------------------
    def _percentiles(self, hist: torch.Tensor | None, count: int, zeros: int, amax: float, ps) -> dict[str, float]:
        out = {}
        if hist is None or count == 0:
            return {percentile_key(p): 0.0 for p in ps}
        lo, per = float(self.hist["lo"]), int(self.hist["per_octave"])
        cum = torch.cumsum(hist.double(), 0)
        for p in ps:
            rank = p / 100.0 * count
            if rank <= zeros:
                out[percentile_key(p)] = 0.0
                continue
            need = rank - zeros
            i = int(torch.searchsorted(cum, torch.tensor([need], dtype=torch.float64)).item())
            i = min(i, hist.numel() - 1)
            before = float(cum[i - 1]) if i > 0 else 0.0
            inbin = float(hist[i]) or 1.0
            frac = min(1.0, max(0.0, (need - before) / inbin))
            v = 2.0 ** (lo + (i + frac) / per)
            out[percentile_key(p)] = _r(min(v, amax))
        return out

    def _summary(self, bins: list[_Bin], ps) -> dict:
        calls = sum(b.calls for b in bins)
        count = sum(b.count for b in bins)
        zeros = sum(b.zeros for b in bins)
        s = sum(b.sum for b in bins)
        ss = sum(b.sumsq for b in bins)
        amax = max((b.amax for b in bins), default=0.0)
        hs = [b.hist for b in bins if b.hist is not None]
        hist = None
        for h in hs:
            hist = h.clone() if hist is None else hist + h
        mean = s / count if count else 0.0
        std = math.sqrt(max(0.0, ss / count - mean * mean)) if count else 0.0
        return {"calls": calls, "count": count, "amax": _r(amax), **self._percentiles(hist, count, zeros, amax, ps),
                "mean": _r(mean), "std": _r(std), "zero_fraction": _r(zeros / count) if count else 0.0}

    def to_json(self, percentiles=PERCENTILES) -> dict:
        ps = sorted(set(float(p) for p in percentiles))
        edges = [_r(1.0 - b / self.nbins) for b in range(self.nbins + 1)]
        layers = {}
        for name in self.order:
            L = self.layers[name]
            d = {"in_features": L.in_features, **self._summary(list(L.bins.values()), ps)}
            if L.chan_amax is not None and L.chan_amax.numel():
                ca = L.chan_amax.float()
                top = torch.topk(ca, min(4, ca.numel()))
                med = float(ca.median())
                d["channels"] = {"amax_median": _r(med), "amax_max_over_median": _r(float(ca.max()) / med) if med > 0 else None,
                                 "top": [[int(i), _r(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())]}
            d["bins"] = [{"bin": b, "t": [edges[b], edges[b + 1]], **self._summary([L.bins[b]], ps)}
                         for b in sorted(L.bins)]
            layers[name] = d
        return {"schema": SCHEMA, "percentiles": ps,
                "bins": {"n": self.nbins, "t_edges": edges,
                         "t": "model_sampling.timestep(sigma) / timestep(sigma_max); bin 0 = noisiest steps"},
                "runs": self.runs, "model_calls": self.model_calls, "layers": layers}


def _fetch_runs(session, res) -> list[tuple[str, bytes]]:
    out = []
    for node_id in sorted((res.history.get("outputs") or {}), key=str):
        for ent in res.history["outputs"][node_id].get("quantgate_calibration") or []:
            out.append((ent["filename"], session.client.view(ent["filename"], ent.get("subfolder", ""),
                                                             ent.get("type", "output"))))
    if not out:
        raise ComfyError("the calibration run returned no QGCalibrationSave output")
    return out


def collect(session, model_name: str, *, workflow, seeds, sizes, settings, bins: int = 6, sample_rows: int = 0,
            timeout: float = 600.0, log=None, what: str = "calibrate") -> Merged:
    """Run the workflow once per (seed, size) with the calibration nodes; merge the results."""
    log = log or (lambda *_: None)
    from harness.console import step_printer, tty
    loader = graph.model_loader(workflow.wf, workflow.model_node, "{{model}}")
    merged = Merged()
    runs = [(s, w, h) for s in seeds for (w, h) in sizes]
    for n, (seed, w, h) in enumerate(runs, 1):
        wf = workflow.build(model_name, int(seed), int(w), int(h), settings, prefix="qg-calib")
        wf = graph.with_calibration(wf, loader, bins=bins, sample_rows=sample_rows, prefix=f"qg-{what}")
        msg = f"[{n}/{len(runs)}] {what} seed {seed} {w}x{h}"
        res = session.client.run(wf, timeout=timeout, on_progress=step_printer(msg) if tty() else None)
        log(f"  {msg} {res.seconds:.2f} s")
        for fname, data in _fetch_runs(session, res):
            with tempfile.TemporaryDirectory(prefix="quantgate-calib-") as tmp:
                p = Path(tmp) / "run.safetensors"
                p.write_bytes(data)
                try:
                    with SafetensorsFile(p) as f:
                        merged.add_run(f, fname)
                except InputError as e:
                    raise ComfyError(f"{fname}: the calibration file from the server is unreadable: {e.problem}") from None
    if not merged.layers:
        raise ComfyError("the calibration runs recorded no Linear inputs (does the workflow sample the model?)")
    return merged


def samples_tensors(merged: Merged) -> tuple[dict[str, torch.Tensor], dict]:
    """Held-out input rows per layer (for the SQNR numbers), as a tensors dict + index metadata."""
    tensors, index = {}, {}
    for i, name in enumerate(merged.order):
        if name not in merged.samples:
            continue
        tensors[f"x.{i}"] = torch.cat(merged.samples[name]).contiguous()
        tensors[f"rows.{i}"] = torch.tensor(merged.sample_rows[name], dtype=torch.int64)
        index[name] = i
    return tensors, {"schema": "quantgate.calibration-samples/1", "layers": index}


def load_samples(path) -> dict[str, list[torch.Tensor]]:
    """{layer: [per-call input rows]} from a samples file written by ``quantgate calibrate``."""
    with SafetensorsFile(path) as f:
        from quant.inputs import samples_index
        text = f.metadata.get("quantgate_samples", "")
        if '"quantgate.calibration-samples/1"' not in text:
            raise InputError("not a quantgate calibration samples file", path)
        meta = samples_index(text, path)
        out = {}
        for name, i in meta["layers"].items():
            x = f.get(f"x.{i}").float()
            rows = [int(r) for r in f.get(f"rows.{i}").tolist()]
            out[name] = list(torch.split(x, rows)) if sum(rows) == x.shape[0] else [x]
        return out


def provenance(session, source, src_sha: str, workflow, settings, seeds, sizes, holdout) -> dict:
    return {"model": {"name": Path(source).name, "sha256": src_sha},
            "workflow": {"name": workflow.source, "model_node": workflow.model_node, "settings": settings},
            "seeds": [int(s) for s in seeds], "sizes": [list(s) for s in sizes],
            "holdout_seeds": [int(s) for s in holdout],
            "comfyui": {"version": session.version, "embedded": bool(getattr(session, "embedded", False))},
            "tool": {"name": "quantgate", "version": TOOL_VERSION},
            "nodes": "harness/custom_nodes/quantgate_calibration.py (QGCalibrate, QGCalibrationSave)"}
