"""Layout diff: compare two checkpoints / index files / shard dirs / golden manifests layer by layer
(companion sets, dtypes, shapes, which layers are quantized and how, metadata) and explain the
differences in groups, saying which ones ComfyUI treats as equivalent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from quant.checkpoint import IGNORED_KEYS, Structure, build, pattern
from quant.formats import marker_format
from quant.comfy.versions import COMFY_VERSIONS, QUANT_METADATA_KEY
from quant.sources import Source, SourceTensor, open_source

# legacy name -> comfy_quant name (ComfyUI's convert_old_quants renames them, comfy_format.md §1.4)
LEGACY_RENAME = dict(marker_format().legacy_names)
READ_METADATA = ("config", QUANT_METADATA_KEY)          # the header keys ComfyUI reads (§4.3)


class ManifestSource(Source):
    """A golden manifest seen through the Source interface (headers only, no data)."""

    kind = "manifest"

    def __init__(self, m: dict):
        super().__init__(m.get("name", "manifest"))
        self.m = m
        self.metadata = dict(m.get("metadata") or {})
        self._infos = {n: SourceTensor(n, t["dtype"], tuple(t["shape"]), "manifest", 0)
                       for n, t in m["tensors"].items()}

    def get(self, name):
        import torch
        return torch.zeros(self._infos[name].shape, dtype=torch.uint8)   # content unknown


def open_side(x):
    from harness.verify import manifests as golden
    if golden.is_manifest_name(str(x)):
        return ManifestSource(golden.load(str(x)))
    return open_source(x)


@dataclass
class Group:
    message: str
    equivalent: bool
    names: list[str] = field(default_factory=list)

    @property
    def examples(self) -> list[str]:
        return self.names

    def text(self) -> str:
        n = len(self.names)
        if not n:
            return self.message
        pats = list(dict.fromkeys(pattern(x) for x in self.names))
        shown = ", ".join(pats[:3]) + (f" (+{len(pats) - 3} more patterns)" if len(pats) > 3 else "")
        return f"{n} {'entry' if n == 1 else 'entries'} ({shown}): {self.message}"


@dataclass
class DiffResult:
    a: str
    b: str
    groups: list[Group]
    structure_only: bool = False

    @property
    def same(self) -> bool:
        return not self.groups

    @property
    def equivalent(self) -> bool:
        return all(g.equivalent for g in self.groups)

    @property
    def exit_code(self) -> int:
        return 0 if self.equivalent else 1

    def lines(self) -> list[str]:
        out = [f"{'equivalent' if g.equivalent else 'DIFFERENT '}: {g.text()}" for g in self.groups]
        if self.same:
            verdict = "same layout"
        elif self.equivalent:
            verdict = "equivalent layouts (only differences ComfyUI treats as the same)"
        else:
            verdict = f"{sum(not g.equivalent for g in self.groups)} kinds of differences"
        mode = " (structure only: widths ignored)" if self.structure_only else ""
        out.append(f"{verdict}: {self.a} vs {self.b}{mode}")
        return out

    def as_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "same": self.same, "equivalent": self.equivalent,
                "structure_only": self.structure_only,
                "groups": [{"equivalent": g.equivalent, "message": g.message, "count": len(g.names),
                            "names": g.names, "text": g.text()} for g in self.groups]}


def _ts(info) -> str:
    return f"{info.dtype}{list(info.shape)}"


def _fmt_label(la) -> str:
    if la.legacy:
        return "float8_e4m3fn (legacy scaled_fp8)"
    return f"{la.comfy_format} (comfy_quant)"


def _logical(st: Structure) -> dict[str, object]:
    """logical tensor name -> declared Layer (quantized weight) or SourceTensor (plain tensor)."""
    comp = st.companion_keys()
    out = {}
    for k, info in st.infos.items():
        if k in comp or k.endswith(".comfy_quant") or k in IGNORED_KEYS or any(m.key == k for m in st.markers):
            continue
        out[k] = info
    for la in st.declared:
        out[la.name + ".weight"] = la
    return out


def diff_structures(a: Structure, b: Structure, *, structure_only=False, la_name="here",
                    lb_name="in the reference") -> list[Group]:
    groups: dict[tuple, Group] = {}

    def add(msg, eq, name):
        g = groups.setdefault((msg, eq), Group(msg, eq))
        g.names.append(name)

    A, B = _logical(a), _logical(b)
    if structure_only:          # modulo width *and* depth: one representative per name pattern
        A = {pattern(n): v for n, v in sorted(A.items(), reverse=True)}
        B = {pattern(n): v for n, v in sorted(B.items(), reverse=True)}
    for n in A.keys() - B.keys():
        add(f"only {la_name}", False, n)
    for n in B.keys() - A.keys():
        add(f"only {lb_name}", False, n)
    for n in sorted(A.keys() & B.keys()):
        x, y = A[n], B[n]
        xq, yq = not isinstance(x, SourceTensor), not isinstance(y, SourceTensor)
        if not xq and not yq:
            if x.dtype != y.dtype:
                add(f"unquantized, {x.dtype} {la_name}, {y.dtype} {lb_name}", False, n)
            if not structure_only and tuple(x.shape) != tuple(y.shape):
                add(f"shape differs ({la_name} vs {lb_name})", False, n)
            elif structure_only and len(x.shape) != len(y.shape):
                add(f"rank differs ({la_name} {len(x.shape)}-D, {lb_name} {len(y.shape)}-D)", False, n)
            continue
        if xq != yq:
            qx = _fmt_label(x) if xq else f"unquantized {x.dtype}"
            qy = _fmt_label(y) if yq else f"unquantized {y.dtype}"
            add(f"quantized differently: {qx} {la_name}, {qy} {lb_name}", False, x.name if xq else y.name)
            continue
        _diff_layer(a, b, x, y, add, structure_only, la_name, lb_name)
    # markers
    ma = {m.key: m for m in a.markers}
    mb = {m.key: m for m in b.markers}
    for k in ma.keys() | mb.keys():
        if k in ma and k in mb:
            if (ma[k].dtype, ma[k].numel) != (mb[k].dtype, mb[k].numel):
                add(f"scaled_fp8 marker {ma[k].dtype}{list(ma[k].shape)} {la_name}, "
                    f"{mb[k].dtype}{list(mb[k].shape)} {lb_name}", False, k)
        elif k in ma and not b.declared or k in mb and not a.declared:
            add("scaled_fp8 marker present on one side only", False, k)
    # metadata
    for k in sorted(a.metadata.keys() | b.metadata.keys()):
        if k == QUANT_METADATA_KEY:
            continue          # compared through the layers above
        va, vb = a.metadata.get(k), b.metadata.get(k)
        if va == vb:
            continue
        eq = k not in READ_METADATA
        what = ("only " + (la_name if vb is None else lb_name)) if va is None or vb is None else "differs"
        add(f"header metadata {k!r} {what}" + ("; ComfyUI does not read it" if eq else ""), eq, f"__metadata__.{k}")
    hq_a, hq_b = QUANT_METADATA_KEY in a.metadata, QUANT_METADATA_KEY in b.metadata
    if hq_a != hq_b:
        add(f"header _quantization_metadata {'only ' + (la_name if hq_a else lb_name)}", _carriers_equivalent(a, b),
            f"__metadata__.{QUANT_METADATA_KEY}")
    return sorted(groups.values(), key=lambda g: (g.equivalent, -len(g.names), g.message))


def _carriers_equivalent(a, b) -> bool:
    """Same layers declared the same way through different carriers -> equivalent for ComfyUI >= 0.4."""
    da = {la.name: (la.comfy_format, la.fpmm) for la in a.declared}
    db = {la.name: (la.comfy_format, la.fpmm) for la in b.declared}
    return da == db


def _diff_layer(a, b, x, y, add, structure_only, la_name, lb_name):
    name = x.name
    if x.comfy_format != y.comfy_format:
        add(f"quantized differently: {_fmt_label(x)} {la_name}, {_fmt_label(y)} {lb_name}", False, name)
        return
    if x.fpmm != y.fpmm:
        add(f"full_precision_matrix_mult {x.fpmm} {la_name}, {y.fpmm} {lb_name}", False, name)
    if x.legacy != y.legacy:
        add(f"{_fmt_label(x)} {la_name}, {_fmt_label(y)} {lb_name}: equivalent for ComfyUI >= "
            f"{COMFY_VERSIONS['comfy_quant_tensor']} (it converts legacy files on load)", True, name)
    ka = {LEGACY_RENAME.get(s, s): (s, a.infos[k]) for s, k in x.keys.items() if s not in ("comfy_quant",)}
    kb = {LEGACY_RENAME.get(s, s): (s, b.infos[k]) for s, k in y.keys.items() if s not in ("comfy_quant",)}
    for s in sorted(ka.keys() | kb.keys()):
        if s not in kb:
            add(f".{ka[s][0]} only {la_name}", s == "bias" and False, name)
            continue
        if s not in ka:
            add(f".{kb[s][0]} only {lb_name}", False, name)
            continue
        (sa, ia), (sb, ib) = ka[s], kb[s]
        same_shape = tuple(ia.shape) == tuple(ib.shape)
        scalar_pair = {tuple(ia.shape), tuple(ib.shape)} <= {(), (1,)}
        if structure_only and not same_shape and len(ia.shape) == len(ib.shape) and not scalar_pair:
            same_shape = True
        if ia.dtype == ib.dtype and same_shape and sa == sb:
            continue
        if ia.dtype == ib.dtype and (same_shape or scalar_pair):
            since = COMFY_VERSIONS["comfy_quant_tensor" if sa != sb else "quantization_metadata_header"]
            add(f"{sb} {_ts(ib)} {lb_name}, {sa} {_ts(ia)} {la_name}: equivalent for ComfyUI >= {since}", True, name)
            continue
        if ia.dtype != ib.dtype and same_shape and s == "bias":
            add(f"bias {ia.dtype} {la_name}, {ib.dtype} {lb_name}", False, name)
            continue
        add(f".{s}: {_ts(ia)} {la_name}, {_ts(ib)} {lb_name}", False, name)


def diff_paths(a, b, *, structure_only: bool = False) -> DiffResult:
    with open_side(a) as sa, open_side(b) as sb:
        groups = diff_structures(build(sa), build(sb), structure_only=structure_only)
    return DiffResult(str(a), str(b), groups, structure_only)
