"""Structural alignment of the weighted layers of two reports (pure; no onnx, no onnxruntime).

Exports of the same network by different frameworks, exporters or versions
name their tensors and nodes differently, insert Transpose/Reshape/Identity
nodes, and may have folded BatchNorm already. What stays is the sequence of
weighted layers (Conv, ConvTranspose, Gemm, MatMul) and their *signature*:
op class, spatial kernel, groups, input and output channels, and the weight
shape up to layout. :func:`align` pairs two such sequences with a global
(Needleman-Wunsch) alignment:

* the score of a pair is the signature similarity (:func:`signature_similarity`,
  0..1), or, when the fp32 activations of both layers on the same inputs are
  known, ``(signature + max(cosine, 0)) / 2``; pairs of different op classes,
  or scoring below :data:`MIN_SCORE`, cannot be paired;
* a gap (a layer left unaligned) costs nothing, so the alignment maximizes the
  summed score of the pairs; inserted or removed layers become gaps;
* a tiny bonus for equal relative position breaks ties between layers of equal
  signature (repeated blocks) in favour of the diagonal;
* pinned pairs (``qaudit compare --map``) are anchors: they score above
  anything else and exclude every other pairing of their layers; a layer
  pinned to nothing is never paired. Pins that cross each other cannot all
  hold and raise :class:`~qaudit.errors.ConfigError`.

Each pair gets a ``confidence`` in [0, 1]: 1 for a pin; otherwise its score,
lowered by 10% when it rests on signature and order alone and the other model
has another layer of the same signature (the order decided).

Signatures are read from what a :class:`~qaudit.report.Report` row carries
(``op_type``, ``w_shape``, ``kernel``, ``groups``, ``c_in``, ``c_out``), so two
saved JSON reports align without running anything. Rows of reports written
before these fields existed align by op class and order only (similarity 0.5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from qaudit.errors import ConfigError
from qaudit.report import LayerRow, Report

#: op classes that can be paired: a Keras Dense becomes MatMul(+Add), a torch Linear Gemm
OP_CLASS = {"Conv": "conv", "ConvTranspose": "convT", "Gemm": "dense", "MatMul": "dense"}

#: weights of the signature fields in :func:`signature_similarity` (sum 1)
FIELD_WEIGHTS = {"c_out": 0.3, "c_in": 0.25, "kernel": 0.2, "groups": 0.15, "w_shape": 0.1}

#: similarity when only the op class is known (reports without signature fields)
OP_ONLY = 0.5
#: pairs scoring below this are never aligned
MIN_SCORE = 0.5
#: score of a pinned pair (above any sum of real scores a row can collect)
PIN_SCORE = 1e6
#: ties between equal signatures go to the pair closest to the diagonal
POSITION_BONUS = 1e-3
#: confidence factor of a pair that only order decided among equal signatures
AMBIGUOUS = 0.9


@dataclass(frozen=True)
class LayerSig:
    """What identifies a weighted layer across exports."""

    index: int  # row index in its report
    name: str
    op_type: str
    w_shape: tuple[int, ...] | None = None
    kernel: tuple[int, ...] | None = None
    groups: int | None = None
    c_in: int | None = None
    c_out: int | None = None

    @classmethod
    def from_row(cls, r: LayerRow) -> LayerSig:
        return cls(
            index=r.index,
            name=r.name,
            op_type=r.op_type,
            w_shape=tuple(r.w_shape) if r.w_shape is not None else None,
            kernel=tuple(r.kernel) if r.kernel is not None else None,
            groups=r.groups,
            c_in=r.c_in,
            c_out=r.c_out,
        )

    @property
    def op_class(self) -> str:
        return OP_CLASS.get(self.op_type, self.op_type)

    def describe(self) -> str:
        if self.c_out is None:
            return self.op_type
        k = "x".join(map(str, self.kernel)) if self.kernel else ""
        g = f" g{self.groups}" if self.groups and self.groups > 1 else ""
        return f"{self.op_type} {self.c_in}->{self.c_out}{(' ' + k) if k else ''}{g}"


def signatures(report: Report) -> list[LayerSig]:
    """The weighted layers of ``report`` in graph order."""
    return [LayerSig.from_row(r) for r in report.layers if r.has_weights]


def _field(s: LayerSig, key: str):
    v = getattr(s, key)
    if key == "w_shape" and v is not None:
        # modulo layout: Gemm [out, in] vs MatMul [in, out], HWIO vs OIHW
        return tuple(sorted(v))
    return v


def signature_similarity(a: LayerSig, b: LayerSig) -> float | None:
    """0..1: the weighted share of known signature fields that agree; ``None`` for
    different op classes (never paired). :data:`OP_ONLY` when no field is known on both sides."""
    if a.op_class != b.op_class:
        return None
    known = matched = 0.0
    for key, w in FIELD_WEIGHTS.items():
        va, vb = _field(a, key), _field(b, key)
        if va is None or vb is None:
            continue
        known += w
        matched += w if va == vb else 0.0
    return matched / known if known else OP_ONLY


@dataclass(frozen=True)
class Pair:
    """Two aligned layers: positions in the signature lists, and why they were paired."""

    a: int
    b: int
    a_name: str
    b_name: str
    confidence: float
    method: str  # "map" | "signature" | "signature+activation"
    signature: float | None  # signature similarity
    activation: float | None = None  # cosine similarity of the fp32 activations


@dataclass(frozen=True)
class Alignment:
    pairs: tuple[Pair, ...]
    unaligned_a: tuple[int, ...]  # positions in the signature lists
    unaligned_b: tuple[int, ...]

    def partner_of_a(self) -> dict[int, Pair]:
        return {p.a: p for p in self.pairs}


def resolve_layer(sigs: Sequence[LayerSig], ref: str | int, what: str) -> int:
    """Position in ``sigs`` of a layer named ``ref`` (a node name, or ``#N``/N for row index N)."""
    if isinstance(ref, int) or (isinstance(ref, str) and ref.startswith("#") and ref[1:].isdigit()):
        idx = int(ref if isinstance(ref, int) else ref[1:])
        for pos, s in enumerate(sigs):
            if s.index == idx:
                return pos
        raise ConfigError(f"{what}: row #{idx} is not a weighted layer of that model")
    for pos, s in enumerate(sigs):
        if s.name == ref:
            return pos
    names = ", ".join(s.name for s in sigs[:4])
    raise ConfigError(
        f"{what}: no weighted layer named {ref!r} (weighted layers: {names}{', ...' if len(sigs) > 4 else ''})"
    )


def align(
    a: Sequence[LayerSig],
    b: Sequence[LayerSig],
    activation: Mapping[tuple[int, int], float] | None = None,
    pins: Sequence[tuple[int | None, int | None]] = (),
) -> Alignment:
    """Align the weighted layers ``a`` and ``b`` (each in graph order).

    ``activation`` maps position pairs to the cosine similarity of their fp32
    activations (pairs missing from it are scored by signature alone).
    ``pins`` are position pairs that must be aligned; ``(i, None)`` /
    ``(None, j)`` forbid pairing that layer at all.
    """
    activation = activation or {}
    n, m = len(a), len(b)
    pinned: dict[int, int] = {}
    pinned_b: dict[int, int] = {}
    banned_a: set[int] = set()
    banned_b: set[int] = set()
    for i, j in pins:
        if i is not None and j is not None:
            if pinned.get(i, j) != j or pinned_b.get(j, i) != i:
                raise ConfigError(f"--map pins {a[i].name} or {b[j].name} to two different layers")
            pinned[i] = j
            pinned_b[j] = i
        elif i is not None:
            banned_a.add(i)
        elif j is not None:
            banned_b.add(j)
    for i in banned_a & set(pinned):
        raise ConfigError(f"--map both pins {a[i].name} and leaves it unaligned")
    for j in banned_b & set(pinned_b):
        raise ConfigError(f"--map both pins {b[j].name} and leaves it unaligned")

    # score of each candidate pair, and its ingredients
    score: dict[tuple[int, int], float] = {}
    parts: dict[tuple[int, int], tuple[float | None, float | None]] = {}
    for i in range(n):
        for j in range(m):
            if i in pinned or j in pinned_b:
                if pinned.get(i) == j:
                    score[i, j] = PIN_SCORE
                    parts[i, j] = (signature_similarity(a[i], b[j]), activation.get((i, j)))
                continue
            if i in banned_a or j in banned_b:
                continue
            sig = signature_similarity(a[i], b[j])
            if sig is None:
                continue
            act = activation.get((i, j))
            s = sig if act is None else 0.5 * sig + 0.5 * max(float(act), 0.0)
            if s < MIN_SCORE:
                continue
            pos = 1.0 - abs((i + 0.5) / n - (j + 0.5) / m)
            score[i, j] = s + POSITION_BONUS * pos
            parts[i, j] = (sig, act)

    # Needleman-Wunsch with zero gap cost: maximize the summed score of the pairs
    F = [[0.0] * (m + 1) for _ in range(n + 1)]
    for i in range(1, n + 1):
        Fi, Fp = F[i], F[i - 1]
        for j in range(1, m + 1):
            best = max(Fp[j], Fi[j - 1])
            s = score.get((i - 1, j - 1))
            if s is not None and Fp[j - 1] + s > best:
                best = Fp[j - 1] + s
            Fi[j] = best
    pairs_pos = []
    i, j = n, m
    while i > 0 and j > 0:
        s = score.get((i - 1, j - 1))
        if s is not None and F[i][j] == F[i - 1][j - 1] + s:
            pairs_pos.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif F[i][j] == F[i - 1][j]:
            i -= 1
        else:
            j -= 1
    pairs_pos.reverse()
    got = dict(pairs_pos)
    crossed = [(i, j) for i, j in pinned.items() if got.get(i) != j]
    if crossed:
        i, j = crossed[0]
        raise ConfigError(
            f"--map pins cross each other: {a[i].name} <-> {b[j].name} contradicts the graph order of the other pins"
        )

    pairs = []
    for i, j in pairs_pos:
        sig, act = parts[i, j]
        if i in pinned:
            conf, method = 1.0, "map"
        else:
            conf = sig if act is None else 0.5 * sig + 0.5 * max(float(act), 0.0)
            method = "signature" if act is None else "signature+activation"
            if act is None:
                # did order alone decide between layers of equal signature?
                rivals = [k for k in range(m) if k != j and (signature_similarity(a[i], b[k]) or 0) >= sig]
                rivals += [k for k in range(n) if k != i and (signature_similarity(a[k], b[j]) or 0) >= sig]
                if rivals:
                    conf *= AMBIGUOUS
        pairs.append(Pair(i, j, a[i].name, b[j].name, round(min(conf, 1.0), 4), method, sig, act))
    paired_a = {p.a for p in pairs}
    paired_b = {p.b for p in pairs}
    return Alignment(
        pairs=tuple(pairs),
        unaligned_a=tuple(k for k in range(n) if k not in paired_a),
        unaligned_b=tuple(k for k in range(m) if k not in paired_b),
    )


__all__ = ["Alignment", "LayerSig", "Pair", "align", "resolve_layer", "signature_similarity", "signatures"]
