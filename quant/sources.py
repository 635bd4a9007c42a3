"""Checkpoint sources: one ``.safetensors`` file, an ``*.index.json``, a directory of shards, or a
GGUF file. All give the same read-only view: names, dtypes and shapes from headers alone, and
tensors one at a time (``get``), so nothing ever holds the whole model.
"""
from __future__ import annotations

import contextvars
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, short
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

    def raw(self, name: str) -> bytes:
        """The stored bytes of one (small) tensor, without torch where the source allows."""
        from .safetensors_io import tensor_bytes
        return bytes(tensor_bytes(self.get(name)))

    def values(self, name: str) -> list[float]:
        """A small float tensor's values as Python floats (scales), without torch for
        F32/F64/F16/BF16 safetensors data."""
        from .safetensors_io import decode_floats
        info = self.info(name)
        v = decode_floats(info.dtype, self.raw(name)) if not info.stored else None
        if v is None:
            v = [float(x) for x in self.get(name).float().reshape(-1).tolist()]
        return v

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
                        raise InputError(f"tensor {short(name)} appears in two shards "
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

    def raw(self, name: str) -> bytes:
        return bytes(self._files[self._where[name]].raw(name))

    def span(self, name: str) -> tuple[str, int, int]:
        """``(file, begin, end)``: where a tensor's bytes lie (for direct, batched reads)."""
        ti = self._files[self._where[name]].info(name)
        return self._where[name], ti.begin, ti.end

    def pread_into(self, file: str, begin: int, mv: memoryview) -> None:
        """Fill ``mv`` with the bytes of ``file`` from ``begin`` (pread; safe from any thread)."""
        self._files[file].pread_into(begin, mv)

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
        from quant.gguf import safety as gguf_safety
        gguf_safety.prescan(path)      # every count/length bounded by the file size before gguf-py reads
        try:
            self._r = GGUFReader(str(path), "r")
        except Exception as e:  # gguf-py raises ValueError/struct.error/IndexError/... on bad files
            raise InputError(f"not a readable GGUF file ({type(e).__name__}: {str(e)[:120]})", path) from None
        self._t = {}
        for t in self._r.tensors:
            ggml_shape = tuple(int(d) for d in t.shape)
            shape = tuple(reversed(ggml_shape))
            gguf_safety.check_tensor(path, t.name, t.tensor_type.name)
            key = f"comfy.gguf.orig_shape.{t.name}"
            if key in self._r.fields:
                shape = gguf_safety.orig_shape(path, t.name, self._r.fields[key], int(t.n_elements))
            self._t[t.name] = t
            tt = t.tensor_type.name
            dt = tt if tt in ("F32", "F16", "BF16") else "F32"     # quantized types dequantize to F32
            self._infos[t.name] = SourceTensor(t.name, dt, shape, str(path), int(t.n_bytes), stored=tt)
        arch = self._r.fields.get("general.architecture")
        if arch is not None:
            from gguf import GGUFValueType
            if list(arch.types) != [GGUFValueType.STRING] or len(arch.data) != 1:
                raise InputError("general.architecture is not a string", path)
            self.metadata["general.architecture"] = bytes(arch.parts[arch.data[0]]).decode("utf-8", "replace")

    def get(self, name: str) -> torch.Tensor:
        import numpy as np
        import torch
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


def _inside(p: Path, root: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):
        return False


def _from_index(index: Path, allow_outside: bool = False) -> SafetensorsSource:
    from .inputs import safetensors_index
    wm = safetensors_index(index)["weight_map"]
    if not wm:
        raise InputError("the index's weight_map is empty: no tensors to read", index)
    root = index.parent
    files = []
    for shard in dict.fromkeys(wm.values()):
        if "\0" in shard:
            raise InputError(f"shard {short(shard)} listed in the index is not a file name", index)
        p = root / shard
        if not allow_outside:
            if Path(shard).is_absolute() or ".." in Path(shard).parts:
                raise InputError(f"shard {short(shard)} lies outside the index's directory (absolute path or "
                                 "'..'); refused (--allow-outside reads it anyway)", index)
            if not _inside(p, root):
                raise InputError(f"shard {short(shard)} resolves outside the index's directory (a symlink "
                                 "out of it); refused (--allow-outside reads it anyway)", index)
        if not p.is_file():
            raise InputError(f"shard {short(shard)} listed in the index is missing", index)
        files.append(p)
    src = SafetensorsSource(index, files)
    missing = [k for k in wm if k not in src]
    if missing:
        src.close()
        raise InputError(f"{len(missing)} tensors listed in the index are not in their shards "
                         f"(first: {short(missing[0])})", index)
    return src


# set by the CLI's --allow-outside (one flag for every command that reads checkpoints)
ALLOW_OUTSIDE: contextvars.ContextVar[bool] = contextvars.ContextVar("quantgate_allow_outside", default=False)


def open_source(path, *, allow_outside: bool | None = None) -> Source:
    """Open a checkpoint: ``.safetensors`` file, ``*.index.json``, shard directory or ``.gguf``.
    An index's shards must lie inside its directory unless ``allow_outside``; a source without
    tensors is refused."""
    src = _open(Path(path), ALLOW_OUTSIDE.get() if allow_outside is None else allow_outside)
    if len(src) == 0:
        src.close()
        raise InputError("holds no tensors", path)
    return src


def _open(path: Path, allow_outside: bool) -> Source:
    p = Path(path)
    if not p.exists():
        raise InputError("no such file or directory", p)
    if p.is_dir():
        idx = sorted(p.glob("*.safetensors.index.json")) or sorted(p.glob("*.index.json"))
        if len(idx) > 1:
            raise InputError(f"several index files ({', '.join(i.name for i in idx)}); pass one of them", p)
        if idx:
            return _from_index(idx[0], allow_outside)
        files = sorted(p.glob("*.safetensors"))
        if not files:
            raise InputError("directory holds no .safetensors files", p)
        out = next((f for f in files if not _inside(f, p)), None)
        if out is not None and not allow_outside:
            raise InputError(f"shard {short(out.name)} is a symlink out of the directory; refused "
                             "(--allow-outside reads it anyway)", p)
        return SafetensorsSource(p, files)
    if p.name.endswith(".json"):
        return _from_index(p, allow_outside)
    if p.suffix.lower() == ".gguf":
        return GGUFSource(p)
    if p.suffix.lower() in (".ckpt", ".pt", ".pth", ".bin", ".pkl"):
        raise InputError("pickle-based checkpoints are never loaded (unsafe); convert to .safetensors first", p)
    return SafetensorsSource(p, [p])
