"""A model quantized elsewhere (``--quantized Q.onnx``): checked, read and aligned with the fp32 model.

qaudit neither calibrates nor quantizes it: the audit measures ``Q.onnx`` as it
is against the fp32 model it was made from. This module

* loads it and refuses what cannot be audited faithfully: an fp32 model, a
  *dynamically* quantized one (``DynamicQuantizeLinear``, ``ConvInteger``: its
  activation scales are computed from each batch at run time, so it has no
  fixed activation encoding), weight-only ops, and a model whose inputs and
  outputs differ from the fp32 model's (:func:`load_quantized`);
* reads the settings the producer used from the graph: the format, the types,
  per-channel weights; what the graph does not record (the calibration method,
  reduce_range, ...) is ``None`` (:func:`detected_settings`);
* pairs its nodes and tensors with the fp32 graph's by structure, because
  another producer names them its own way (:func:`align`): a float tensor is
  paired by name when the producer kept the fp32 names, otherwise through the
  node that computes it: same op type, inputs read from paired tensors
  (through the Q/DQ pairs in between), same position; a BatchNormalization,
  Relu or Clip that the producer fused into the layer before it maps to that
  layer's output. :func:`renamed` gives the quantized graph the fp32 names of
  what paired, so :mod:`qaudit.pipeline.match` works on it as on ORT's graphs;
  what did not pair is listed as unmatched with its reason, as always;
* says which BatchNormalizations the quantized graph kept, so that the fp32
  reference folds only the others (:func:`kept_batchnorms`): the weight metrics
  then compare each layer with the fp32 weights the quantized graph holds.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qaudit.errors import ModelError
from qaudit.pipeline.graph import initializers, producers, weighted_layers
from qaudit.pipeline.load import (
    DYNAMIC_QUANT_OPS,
    WEIGHT_ONLY_QUANT_OPS,
    LoadedModel,
    load_model,
    quantized_ops,
)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
#: Ops the producer may have fused into the node before them (the quantized graph has none).
FUSABLE = frozenset({"BatchNormalization", "Relu", "Clip", "Identity", "Dropout"})


def load_quantized(path: Path | str, fp32: LoadedModel) -> LoadedModel:
    """Load ``path`` as the quantized twin of ``fp32``; a :class:`ModelError` saying why it cannot be audited."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"quantized model file not found: {path} (--quantized)")
    if path.resolve() == fp32.path.resolve():
        raise ModelError(f"--quantized {path} is MODEL.onnx itself: pass the model quantized from it")
    lm = load_model(path, quantized=True)
    ops = quantized_ops(lm.model)
    if not ops:
        raise ModelError(
            f"--quantized {path} holds no quantized op (no QuantizeLinear, DequantizeLinear or QLinear*): "
            f"it is an fp32 model; pass the model quantized from {fp32.path}, or audit {path} without --quantized"
        )
    for kind, family, why in (
        (
            "dynamically",
            DYNAMIC_QUANT_OPS,
            "its activation scales are computed at run time from each batch, so it has no fixed activation "
            "encoding to audit; qaudit audits static quantization (QDQ or QOperator, e.g. "
            "onnxruntime.quantization.quantize_static)",
        ),
        (
            "weight-only",
            WEIGHT_ONLY_QUANT_OPS,
            "its activations stay float, and qaudit audits static activation and weight quantization "
            "(QDQ or QOperator)",
        ),
    ):
        found = [f"{n} {op}" for op, n in ops.items() if op in family]
        if found:
            raise ModelError(f"--quantized {path} is {kind} quantized ({', '.join(found)}): {why}")
    check_correspondence(fp32, lm)
    return lm


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    out = {}
    for vi in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        tt = vi.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tt.shape.dim)
        out[vi.name] = (tt.elem_type, dims if tt.HasField("shape") else None)
    return out


def _describe(elem, dims) -> str:
    from qaudit.pipeline.graph import elem_dtype

    shape = "?" if dims is None else ",".join("?" if d is None else str(d) for d in dims)
    return f"{elem_dtype(elem) if elem else '?'}[{shape}]"


def check_correspondence(fp32: LoadedModel, q: LoadedModel) -> None:
    """The quantized model must read the fp32 model's inputs and write its outputs: same names,
    types and shapes (a dim unknown in either model matches anything)."""
    where = f"--quantized {q.path} does not correspond to {fp32.path}"
    fix = f"pass the model quantized from {fp32.path}"
    for kind, a, b in (
        ("inputs", [s.name for s in fp32.inputs], [s.name for s in q.inputs]),
        ("outputs", fp32.output_names, q.output_names),
    ):
        if sorted(a) != sorted(b):
            raise ModelError(f"{where}: its {kind} are {', '.join(b)}, the fp32 model's {', '.join(a)}; {fix}")
    fs, qs = _value_shapes(fp32.model), _value_shapes(q.model)
    for name in [s.name for s in fp32.inputs] + list(fp32.output_names):
        (fe, fd), (qe, qd) = fs.get(name, (0, None)), qs.get(name, (0, None))
        same_type = not fe or not qe or fe == qe
        same_dims = (
            fd is None
            or qd is None
            or (len(fd) == len(qd) and all(x is None or y is None or x == y for x, y in zip(fd, qd)))
        )
        if not (same_type and same_dims):
            raise ModelError(
                f"{where}: '{name}' is {_describe(qe, qd)} there and {_describe(fe, fd)} in the fp32 model; {fix}"
            )


# ----------------------------------------------------------------- settings


def weight_encodings(qmodel: onnx.ModelProto) -> list[tuple[str, int, bool]]:
    """``(dtype, scale size, symmetric)`` of every constant weight the quantized graph dequantizes."""
    from qaudit.pipeline.match import _QOP_WEIGHT_INPUTS, _const, quantize_constant

    g = qmodel.graph
    inits, prod = initializers(g), producers(g)
    out = []
    for node in g.node:
        if node.op_type == "DequantizeLinear":
            q = _const(node.input[0], inits, prod)
            if q is None:
                q = quantize_constant(node.input[0], inits, prod)
            names = list(node.input[1:3])
        elif node.op_type in _QOP_WEIGHT_INPUTS and len(node.input) > 5:
            i = _QOP_WEIGHT_INPUTS[node.op_type]
            q = _const(node.input[i], inits, prod)
            names = list(node.input[i + 1 : i + 3])
        else:
            continue
        if q is None or q.dtype.kind not in "iu" or q.size < 2:  # an activation, or a bias scalar
            continue
        s = _const(names[0], inits, prod)
        z = _const(names[1], inits, prod) if len(names) > 1 and names[1] else np.zeros(1, q.dtype)
        if s is None or z is None:
            continue
        mid = 0 if q.dtype.kind == "i" else 1 << (8 * q.dtype.itemsize - 1)
        is_bias = q.dtype in (np.int32, np.int64)
        if not is_bias:
            out.append((str(q.dtype), int(s.size), bool(np.all(z.astype(np.int64) == mid))))
    return out


def detected_settings(qmodel: onnx.ModelProto, matching=None) -> dict:
    """The quantization settings read from the quantized graph, keyed like ``QuantConfig.as_dict()``;
    ``None`` where the graph does not say (the calibration method and its options, reduce_range,
    which nodes the producer left in float)."""
    from qaudit.pipeline.match import quantized_tensors

    ops = quantized_ops(qmodel)
    fmt = "qoperator" if any(op not in QDQ_OPS for op in ops) else "qdq"
    acts = [enc for _, enc, _ in quantized_tensors(qmodel).values()]
    weights = weight_encodings(qmodel)

    def types(found) -> str | None:
        names = sorted(set(found))
        return ",".join(names) if names else None

    def symmetric(flags) -> bool | None:
        return None if not flags else all(flags)

    act_sym = []
    for enc in acts:
        mid = 0 if enc.dtype.startswith("int") else 128
        act_sym.append(bool(np.all(np.asarray(enc.zero_point).astype(np.int64) == mid)))
    return {
        "source": "user",  # the quantized model came from the user: qaudit did not quantize it
        "format": fmt,
        "activation_type": types(enc.dtype for enc in acts),
        "weight_type": types(w[0] for w in weights),
        "per_channel": any(w[1] > 1 for w in weights) if weights else None,
        "activation_symmetric": symmetric(act_sym),
        "weight_symmetric": symmetric([w[2] for w in weights]),
        "reduce_range": None,
        "percentile": None,
        "calib_symmetric": None,
        "num_bins": None,
        "exclude": None,
        "calibrate_method": None,
    }


# ---------------------------------------------------------------- alignment


@dataclass
class Alignment:
    """fp32 tensor -> the quantized graph's float tensor computing it, fp32 node -> quantized node."""

    tensors: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, onnx.NodeProto] = field(default_factory=dict)


def _float_source(name: str, prod) -> str:
    """The float tensor behind ``name``, looking through QuantizeLinear/DequantizeLinear chains."""
    seen = set()
    while name in prod and name not in seen and prod[name].op_type in QDQ_OPS:
        seen.add(name)
        name = prod[name].input[0]
    return name


def align(fp32: onnx.ModelProto, qmodel: onnx.ModelProto) -> Alignment:
    """Pair the fp32 graph's nodes and tensors with the quantized graph's (see the module docstring).

    Walks the fp32 graph in order. A node pairs with the quantized node of the same name and op
    type, else with the first unpaired quantized node of its op type that reads the paired twins
    of its inputs at the same positions (constants: any constant). A BatchNormalization, Relu,
    Clip, Identity or Dropout with no such node was fused by the producer into the node before
    it: its output pairs with its input's twin. Anything else stays unpaired (no twin).
    """
    g, qg = fp32.graph, qmodel.graph
    finits = {t.name for t in g.initializer} | {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    qinits = {t.name for t in qg.initializer}
    qprod = producers(qg)
    qconst = qinits | {n.output[0] for n in qg.node if n.op_type == "Constant" and n.output}
    skeleton = [n for n in qg.node if n.op_type not in QDQ_OPS and n.op_type != "Constant"]
    by_name = {n.name: n for n in skeleton if n.name}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in skeleton:
        for i in n.input:
            if i:
                readers.setdefault(_float_source(i, qprod), []).append(n)
    taken: set[int] = set()
    al = Alignment()
    q_inputs = {i.name for i in qg.input} - qinits
    for i in g.input:
        if i.name not in finits and i.name in q_inputs:
            al.tensors[i.name] = i.name

    def is_const(name: str) -> bool:
        return _float_source(name, qprod) in qconst

    def fits(node, q) -> bool:
        if id(q) in taken or q.op_type != node.op_type:
            return False
        n = max(len(node.input), len(q.input))
        for a, b in zip(list(node.input) + [""] * (n - len(node.input)), list(q.input) + [""] * (n - len(q.input))):
            if not a or not b:  # an optional input on one side only: a constant (a bias added by BN folding)
                if (a and a not in finits) or (b and not is_const(b)):
                    return False
            elif a in finits or a not in al.tensors:  # a constant, or unpaired (a shape the producer folded)
                if not is_const(b):
                    return False
            elif al.tensors[a] != _float_source(b, qprod):
                return False
        return True

    for node in g.node:
        if node.op_type == "Constant":
            continue
        live = [a for a in node.input if a and a not in finits]
        paired = [a for a in live if a in al.tensors]
        q = by_name.get(node.name)
        if q is None or not fits(node, q):
            pool = readers.get(al.tensors[paired[0]], []) if paired else skeleton
            q = next((c for c in pool if fits(node, c)), None)
        if q is not None:
            taken.add(id(q))
            al.nodes[node.name] = q
            for a, b in zip(node.output, q.output):
                if a and b:
                    al.tensors[a] = b
        elif node.op_type in FUSABLE and len(live) == 1 and live[0] in al.tensors and node.output:
            al.tensors[node.output[0]] = al.tensors[live[0]]
    return al


def check_layers(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, al: Alignment, fp32_path, q_path) -> None:
    """The paired weighted layers must hold weights of the same shapes, and some must pair."""
    from qaudit.pipeline.match import _QOP_WEIGHT_INPUTS

    layers = weighted_layers(fp32.graph)
    qg = qmodel.graph
    qinits, qprod = initializers(qg), producers(qg)
    q_weighted = [n for n in qg.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", *_QOP_WEIGHT_INPUTS)]
    paired = 0
    for wl in layers:
        q = al.nodes.get(wl.name)
        if q is None:
            continue
        paired += 1
        src = _float_source(q.input[wl.weight_index], qprod) if len(q.input) > wl.weight_index else ""
        if src in qinits:
            fshape = tuple(initializers(fp32.graph)[wl.weight_name].dims)
            qshape = tuple(qinits[src].dims)
            if fshape != qshape:
                raise ModelError(
                    f"--quantized {q_path} does not correspond to {fp32_path}: layer '{wl.name}' has weights "
                    f"[{','.join(map(str, qshape))}] there and [{','.join(map(str, fshape))}] in the fp32 model; "
                    f"pass the model quantized from {fp32_path}"
                )
    if (
        layers
        and q_weighted
        and not paired
        and not any(n.name in {wl.name, wl.name + "_quant"} for wl in layers for n in q_weighted)
    ):
        raise ModelError(
            f"--quantized {q_path} does not correspond to {fp32_path}: none of its {len(q_weighted)} weighted "
            f"layers has the structure of one of the fp32 model's {len(layers)}; pass the model quantized from "
            f"{fp32_path}"
        )


def converted_opset(fp32: LoadedModel, q: LoadedModel) -> int | None:
    """``q``'s opset when ``q`` has a higher one and the fp32 graph converted to it by
    ``onnx.version_converter`` pairs more nodes with ``q`` than as it is (qaudit's own per-channel
    QDQ upgrade, quirk 27, turns an opset-11 Softmax into Flatten -> Softmax -> Reshape), else ``None``."""
    if q.opset <= fp32.opset:
        return None
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(fp32.model, q.opset)
    except Exception:  # not convertible: pair the graph as it is
        return None
    return q.opset if len(align(converted, q.model).nodes) > len(align(fp32.model, q.model).nodes) else None


def kept_batchnorms(fp32: onnx.ModelProto, qmodel: onnx.ModelProto) -> set[str]:
    """The fp32 BatchNormalization nodes the quantized graph still computes (not folded there)."""
    al = align(fp32, qmodel)
    # by name too: in QOperator the layer before is a QLinear* op, which the structure cannot pair
    named = {n.name for n in qmodel.graph.node if n.op_type == "BatchNormalization"}
    return {
        n.name for n in fp32.graph.node if n.op_type == "BatchNormalization" and (n.name in al.nodes or n.name in named)
    }


def renamed(fp32: onnx.ModelProto, qmodel: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``qmodel`` whose paired float tensors and nodes carry the fp32 names, and how many
    tensors were renamed. A name the quantized graph already uses is never taken twice, and the
    graph's inputs and outputs keep theirs (they were checked equal to the fp32 model's)."""
    al = align(fp32, qmodel)
    q = copy.deepcopy(qmodel)
    g = q.graph
    used = {t.name for t in g.initializer} | {i.name for i in g.input} | {o for n in g.node for o in n.output}
    fp32_names = {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    boundary = {i.name for i in g.input} | {o.name for o in g.output}
    inverse: dict[str, str] = {}
    for f, t in al.tensors.items():  # fp32 graph order: a fused activation's output wins over its layer's
        inverse[t] = f
    rename = {
        t: f for t, f in inverse.items() if t != f and f not in used and t not in fp32_names and t not in boundary
    }
    if rename:
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in rename:
                    node.input[i] = rename[name]
            for i, name in enumerate(node.output):
                if name in rename:
                    node.output[i] = rename[name]
        for vi in g.value_info:
            if vi.name in rename:
                vi.name = rename[vi.name]
    names = {n.name for n in g.node}
    index = {id(n): i for i, n in enumerate(qmodel.graph.node)}
    for fname, qnode in al.nodes.items():
        if qnode.name != fname and fname not in names:
            g.node[index[id(qnode)]].name = fname
            names.add(fname)
    return q, len(rename)


def given_facts(given: LoadedModel, qmodel: onnx.ModelProto, cfg) -> dict:
    """What the report records of the model quantized elsewhere: ``model.quantized``, the
    settings read from its graph, and the options of ``cfg`` that did not apply."""
    from dataclasses import fields as dc_fields

    from qaudit.options import QuantConfig

    default = QuantConfig()
    unused = [f.name for f in dc_fields(QuantConfig) if getattr(cfg.quant, f.name) != getattr(default, f.name)]
    if cfg.calib is not None:
        unused.insert(0, "calib")
    return {
        "model": {
            "path": str(given.path),
            "sha256": given.sha256,
            "opset": given.opset,
            "producer": f"{given.model.producer_name} {given.model.producer_version}".strip(),
            "quantized_ops": quantized_ops(given.model),
        },
        "settings": detected_settings(qmodel),
        "unused": unused,
    }
