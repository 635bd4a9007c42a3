"""Checkpoint sources: one ``.safetensors`` file, an ``*.index.json``, a directory of shards, or a
GGUF file. All give the same read-only view: names, dtypes and shapes from headers alone, and
tensors one at a time (``get``), so nothing ever holds the whole model.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import InputError
from .safetensors_io import SafetensorsFile


@dataclass(frozen=True)
class SourceTensor:
    name: str
    dtype: str              # safetensors dtype string of what get() returns
    shape: tuple[int, ...]  # logical PyTorch shape
    file: str
    nbytes: int
    stored: str = ""        # storage type when it differs (GGUF: ggml type name, e.g. "Q4_K")


class Source:
    kind = "?"

    def __init__(self, path):
        self.path = Path(path)
        self.metadata: dict[str, str] = {}
        self._infos: dict[str, SourceTensor] = {}

    def keys(self) -> list[str]:
        return list(self._infos)

    def info(self, name: str) -> SourceTensor:
        return self._infos[name]

    def __contains__(self, name) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    @property
    def files(self) -> list[str]:
        return sorted({i.file for i in self._infos.values()})

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def get(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SafetensorsSource(Source):
    """One or several safetensors files seen as one state dict."""

    def __init__(self, path, files: list[Path]):
        super().__init__(path)
        self.kind = "safetensors" if len(files) == 1 else "shards"
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, str] = {}
        try:
            for f in files:
                sf = SafetensorsFile(f)
                self._files[str(f)] = sf
                for name, ti in sf.header.tensors.items():
                    if name in self._where:
                        raise InputError(f"tensor {name!r} appears in two shards "
                                         f"({Path(self._where[name]).name} and {f.name})", self.path)
                    self._where[name] = str(f)
                    self._infos[name] = SourceTensor(name, ti.dtype, ti.shape, str(f), ti.nbytes)
                for k, v in sf.metadata.items():
                    self.metadata.setdefault(k, v)
        except BaseException:
            self.close()
            raise

    def get(self, name: str) -> torch.Tensor:
        return self._files[self._where[name]].get(name)

    def close(self):
        for f in self._files.values():
            f.close()


class GGUFSource(Source):
    """A GGUF file (city96 / llama.cpp layout); quantized tensors are dequantized to float32 by
    gguf-py on ``get`` (the quality baseline and preset source of the GGUF workflow)."""

    kind = "gguf"

    def __init__(self, path):
        super().__init__(path)
        try:
            from gguf import GGUFReader
        except ImportError:
            raise InputError("reading GGUF needs the 'gguf' package (pip install gguf)", path) from None
        try:
            self._r = GGUFReader(str(path), "r")
        except Exception as e:  # gguf-py raises ValueError/struct.error/IndexError/... on bad files
            raise InputError(f"not a readable GGUF file ({type(e).__name__}: {str(e)[:120]})", path) from None
        self._t = {}
        for t in self._r.tensors:
            ggml_shape = tuple(int(d) for d in t.shape)
            shape = tuple(reversed(ggml_shape))
            key = f"comfy.gguf.orig_shape.{t.name}"
            if key in self._r.fields:
                f = self._r.fields[key]
                shape = tuple(int(f.parts[i][0]) for i in f.data)
            self._t[t.name] = t
            tt = t.tensor_type.name
            dt = tt if tt in ("F32", "F16", "BF16") else "F32"     # quantized types dequantize to F32
            self._infos[t.name] = SourceTensor(t.name, dt, shape, str(path), int(t.n_bytes), stored=tt)
        arch = self._r.fields.get("general.architecture")
        if arch is not None:
            self.metadata["general.architecture"] = bytes(arch.parts[arch.data[0]]).decode("utf-8", "replace")

    def get(self, name: str) -> torch.Tensor:
        from gguf import GGMLQuantizationType, quants
        t = self._t[name]
        info = self._infos[name]
        if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            arr = np.asarray(t.data)
        elif t.tensor_type == GGMLQuantizationType.BF16:
            return torch.from_numpy(t.data.copy()).view(torch.bfloat16).reshape(info.shape)
        else:
            arr = quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        return torch.from_numpy(np.ascontiguousarray(arr).copy()).reshape(info.shape)


def _from_index(index: Path) -> SafetensorsSource:
    try:
        obj = json.loads(index.read_text())
        wm = obj["weight_map"]
        if not isinstance(wm, dict):
            raise TypeError
    except FileNotFoundError:
        raise InputError("no such file", index) from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
        raise InputError("not a safetensors index (expected JSON with a 'weight_map' object)", index) from None
    files = []
    for shard in dict.fromkeys(wm.values()):
        p = index.parent / str(shard)
        if not p.is_file():
            raise InputError(f"shard {shard!r} listed in the index is missing", index)
        files.append(p)
    src = SafetensorsSource(index, files)
    missing = [k for k in wm if k not in src]
    if missing:
        src.close()
        raise InputError(f"{len(missing)} tensors listed in the index are not in their shards "
                         f"(first: {missing[0]!r})", index)
    return src


def open_source(path) -> Source:
    """Open a checkpoint: ``.safetensors`` file, ``*.index.json``, shard directory or ``.gguf``."""
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or directory", p)
    if p.is_dir():
        idx = sorted(p.glob("*.safetensors.index.json")) or sorted(p.glob("*.index.json"))
        if len(idx) > 1:
            raise InputError(f"several index files ({', '.join(i.name for i in idx)}); pass one of them", p)
        if idx:
            return _from_index(idx[0])
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise InputError("directory holds no .safetensors files", p)
        return SafetensorsSource(p, files)
    if p.name.endswith(".json"):
        return _from_index(p)
    if p.suffix.lower() == ".gguf":
        return GGUFSource(p)
    if p.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin", ".pkl"):
        raise InputError("pickle-based checkpoints are never loaded (unsafe); convert to .safetensors first", p)
    return SafetensorsSource(p, [p])
