"""Stage 2: graph normalization and BatchNormalization folding.

Why qaudit folds BN itself (seen on onnxruntime 1.32): ORT's
``quant_pre_process`` fuses Conv+BN and MatMul+BN through its graph optimizer
but not Gemm+BN, and it renames the nodes it fuses, so a report row could no
longer be traced to the exported layer. Here the folded node keeps its name,
its output takes the BN's output name (so every downstream tensor keeps its
name) and the weights before and after folding are kept for the report.

Folding (docs/metrics.md, thesis Eq. 3.2), per output channel c::

    s_c    = gamma_c / sqrt(var_c + eps)
    w_fold = s_c * w
    b_fold = s_c * (b - mean_c) + beta_c          (b = 0 without a bias)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from qaudit.errors import ConfigError, ModelError
from qaudit.pipeline.graph import attr, consumers, initializers, output_channel_matrix, producers


@dataclass(frozen=True)
class FoldRecord:
    """What folding did to one layer: enough to report plain and folded weights."""

    layer: str  # node name of the Conv/ConvTranspose/Gemm (kept)
    op_type: str
    bn_node: str  # the BatchNormalization folded into it (removed)
    pre_bn_tensor: str  # the layer's original output, no longer in the folded graph
    weight_before: np.ndarray
    weight_after: np.ndarray
    bias_before: np.ndarray | None
    bias_after: np.ndarray


@dataclass(frozen=True)
class GraphChange:
    """One change qaudit made to the user's graph before quantizing it, and why
    (the report's ``settings.graph_changes`` and one note each)."""

    kind: str  # "inline_if", "unshare_initializer", "opset_upgrade"
    target: str  # the node, initializer or model concerned
    detail: str  # one sentence: what was done and why

    def as_dict(self) -> dict:
        return {"kind": self.kind, "target": self.target, "detail": self.detail}


@dataclass(frozen=True)
class SkippedFold:
    bn_node: str
    reason: str


@dataclass
class FoldResult:
    model: onnx.ModelProto
    folded: dict[str, FoldRecord]  # by layer name
    skipped: list[SkippedFold]


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give unnamed nodes a stable name ``<op_type>_<index>`` (report rows need names)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model


def constants_to_initializers(model: onnx.ModelProto) -> int:
    """Turn top-level ``Constant`` nodes holding a tensor into initializers, in place.

    Real exports (e.g. PaddlePaddle's, PyTorch with constant folding off) keep
    weights in Constant nodes; ORT's quantizer and qaudit's folding only see
    initializers as weights. Returns how many were converted.
    """
    graph = model.graph
    keep, converted = [], 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            a = node.attribute[0]
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                t = copy.deepcopy(a.t)
                t.name = node.output[0]
                graph.initializer.append(t)
                converted += 1
                continue
        keep.append(node)
    if converted:
        del graph.node[:]
        graph.node.extend(keep)
    return converted


def all_tensor_names(graph: onnx.GraphProto) -> set[str]:
    """Every value name of ``graph`` and its subgraphs: inputs, outputs, initializers, node outputs."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    names |= {vi.name for vi in graph.value_info}
    for node in graph.node:
        names.update(node.output)
        names.update(node.input)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= all_tensor_names(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    names |= all_tensor_names(g)
    names.discard("")
    return names


def unique_name(base: str, taken: set[str]) -> str:
    """``base``, or ``base_1``, ``base_2``, ... : the first not in ``taken`` (which it joins)."""
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _parameter_inputs(node: onnx.NodeProto, inits) -> list[int]:
    """Positions of ``node``'s constant weight and bias operands that ORT's quantizer
    quantizes per consumer: Conv/ConvTranspose/Gemm inputs 1 and 2, MatMul's constant operand."""
    if node.op_type in ("Conv", "ConvTranspose", "Gemm"):
        return [i for i in (1, 2) if i < len(node.input) and node.input[i] in inits]
    if node.op_type == "MatMul":
        return [i for i in (0, 1) if node.input[i] in inits]
    return []


def unshare_initializers(model: onnx.ModelProto) -> list[GraphChange]:
    """Give every initializer read as a weight or bias by several Conv/ConvTranspose/Gemm/MatMul
    nodes one copy per node, in place (the first reader keeps the original).

    ONNX Runtime's QDQ quantizer (1.32) copies a bias shared by two layers itself, naming
    the copy ``<name><k>`` after the *initializers* only; when a tensor of that name already
    exists (bias ``b`` and activation ``b0``) the quantized model cannot load
    (docs/ort-quirks.md). The copies here are named ``<name>.<node>``, unique in the graph.
    """
    graph = model.graph
    inits = initializers(graph)
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i in _parameter_inputs(node, inits):
            readers.setdefault(node.input[i], []).append((node, i))
    taken = all_tensor_names(graph)
    listed = {i.name: i for i in graph.input}  # IR < 4: every initializer is also a graph input
    changes = []
    for name, uses in readers.items():
        if len(uses) < 2:
            continue
        for node, i in uses[1:]:
            copy_t = onnx.TensorProto()
            copy_t.CopyFrom(inits[name])
            copy_t.name = unique_name(f"{name}.{node.name}", taken)
            graph.initializer.append(copy_t)
            node.input[i] = copy_t.name
            if name in listed:
                vi = graph.input.add()
                vi.CopyFrom(listed[name])
                vi.name = copy_t.name
        changes.append(
            GraphChange(
                "unshare_initializer",
                name,
                f"initializer '{name}' is read by {len(uses)} layers ({', '.join(n.name for n, _ in uses)}): "
                "each got its own copy (ONNX Runtime's quantizer names its own copy of a shared bias "
                "after existing initializers only, which can collide with another tensor)",
            )
        )
    return changes


#: The opset from which DequantizeLinear has an ``axis`` (per-channel weights in QDQ format).
PER_CHANNEL_QDQ_OPSET = 13


def upgrade_opset(model: onnx.ModelProto, opset: int, target: int, why: str, path="model") -> onnx.ModelProto:
    """``model`` converted by ``onnx.version_converter`` from ``opset`` to ``target``;
    a conversion that fails is a :class:`~qaudit.errors.ModelError` saying ``why`` it was needed."""
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, target)
        onnx.checker.check_model(converted)
    except Exception as e:
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise ModelError(
            f"{why} needs opset >= {target}, and onnx.version_converter could not convert {path} "
            f"from opset {opset}: {text}; re-export the model with opset >= {target}"
        ) from e
    return converted


def normalize(model: onnx.ModelProto, exclude=()) -> tuple[int, list[GraphChange]]:
    """Prepare the user's graph in place for folding and quantization: name every
    node, turn Constant nodes into initializers, give each layer its own weight and
    bias (:func:`unshare_initializers`); check that ``exclude`` names nodes.

    Returns how many Constant nodes became initializers, and the initializers unshared.
    """
    ensure_node_names(model)
    n_constants = constants_to_initializers(model)
    changes = unshare_initializers(model)
    unknown = sorted(set(exclude) - {n.name for n in model.graph.node})
    if unknown:
        raise ConfigError(
            f"--exclude names no node of the model: {', '.join(unknown)} "
            f"(node names look like: {', '.join(n.name for n in model.graph.node[:3])}, ...)"
        )
    return n_constants, changes


def _bad_bn_parameters(bn, inits) -> str | None:
    """Why ``bn``'s constants cannot be folded (non-finite, or var + eps <= 0: the scale
    gamma / sqrt(var + eps) is not a number), or ``None``."""
    names = ("scale", "B", "mean", "var")
    for label, name in zip(names, bn.input[1:5]):
        if not np.isfinite(numpy_helper.to_array(inits[name]).astype(np.float64)).all():
            return f"BatchNormalization {label} '{name}' holds NaN or Inf"
    var = numpy_helper.to_array(inits[bn.input[4]]).astype(np.float64)
    eps = float(attr(bn, "epsilon", 1e-5))
    if var.size and (var + eps).min() <= 0:
        c = int(np.argmin(var + eps))
        return (
            f"var + epsilon <= 0 (channel {c}: var {var.reshape(-1)[c]:g}, epsilon {eps:g}), "
            "so gamma / sqrt(var + epsilon) is not a number"
        )
    return None


def _fold_one(node, bn, inits, w, b):
    """Folded (weight, bias) for ``node`` followed by ``bn`` (numbers in float64)."""
    gamma, beta, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
    eps = float(attr(bn, "epsilon", 1e-5))
    s = gamma / np.sqrt(var + eps)
    w64 = w.astype(np.float64)
    op = node.op_type
    if op == "Conv":
        w_fold = w64 * s.reshape(-1, *([1] * (w.ndim - 1)))
    elif op == "ConvTranspose":
        g = int(attr(node, "group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        shaped = w64.reshape(g, cin // g, cout_g, -1) * s.reshape(g, 1, cout_g, 1)
        w_fold = shaped.reshape(w.shape)
    elif op == "Gemm":
        w_fold = w64 * (s[:, None] if attr(node, "transB", 0) else s[None, :])
    else:  # pragma: no cover - guarded by the caller
        raise ValueError(op)
    b64 = np.zeros_like(s) if b is None else b.astype(np.float64)
    b_fold = s * (b64 - mean) + beta
    return w_fold.astype(w.dtype), b_fold.astype(w.dtype)


#: why a BatchNormalization in ``fold_batchnorm(keep=...)`` is not folded
KEPT_BY_QUANTIZED = "the quantized model (--quantized) computes it in its own right: it was not folded there"


def fold_batchnorm(model: onnx.ModelProto, keep=frozenset()) -> FoldResult:
    """Fold every BatchNormalization whose input comes only from a Conv,
    ConvTranspose or Gemm. Returns a new model; ``model`` is not modified.
    The BatchNormalization nodes named in ``keep`` are not folded (skipped,
    :data:`KEPT_BY_QUANTIZED`).

    A BN is left alone (and listed in ``skipped`` with the reason) when its
    producer has other consumers or is a graph output, when a parameter is not
    a constant, or when the BN runs in training mode.
    """
    model = copy.deepcopy(model)
    graph = model.graph
    inits = initializers(graph)
    prod = producers(graph)
    cons = consumers(graph)
    graph_outputs = {o.name for o in graph.output}
    folded: dict[str, FoldRecord] = {}
    skipped: list[SkippedFold] = []
    remove = set()
    weight_users = {}
    for n in graph.node:
        for name in n.input:
            weight_users[name] = weight_users.get(name, 0) + 1

    for bn in list(graph.node):
        if bn.op_type != "BatchNormalization":
            continue
        x = bn.input[0]
        node = prod.get(x)
        why = None
        if bn.name in keep:
            why = KEPT_BY_QUANTIZED
        elif node is None or node.op_type not in ("Conv", "ConvTranspose", "Gemm"):
            why = (
                f"input comes from {node.op_type if node is not None else 'a graph input'}, not Conv/ConvTranspose/Gemm"
            )
        elif len(cons.get(x, [])) != 1 or x in graph_outputs:
            why = f"{node.name}'s output has other consumers"
        elif len([o for o in bn.output if o]) != 1 or attr(bn, "training_mode", 0):
            why = "BatchNormalization runs in training mode"
        elif not all(n in inits for n in bn.input[1:5]):
            why = "BatchNormalization parameters are not constants"
        elif len(node.input) < 2 or node.input[1] not in inits:
            why = f"{node.name}'s weight is not a constant"
        elif len(node.input) > 2 and node.input[2] and node.input[2] not in inits:
            why = f"{node.name}'s bias is not a constant"
        elif node.op_type == "Gemm" and float(attr(node, "alpha", 1.0)) == 0.0:
            why = "Gemm has alpha = 0"
        else:
            why = _bad_bn_parameters(bn, inits)
        if why:
            skipped.append(SkippedFold(bn.name, why))
            continue

        w = numpy_helper.to_array(inits[node.input[1]])
        has_bias = len(node.input) > 2 and bool(node.input[2])
        b = numpy_helper.to_array(inits[node.input[2]]) if has_bias else None
        if node.op_type == "Gemm" and b is not None:
            # Gemm computes alpha*A*B + beta*C: fold with the effective bias beta*C.
            b = float(attr(node, "beta", 1.0)) * b
        n_out = output_channel_matrix(node, w).shape[0]
        if numpy_helper.to_array(inits[bn.input[1]]).size != n_out:
            skipped.append(SkippedFold(bn.name, f"BN has a channel count different from {node.name}'s outputs"))
            continue
        if b is not None and node.op_type == "Gemm":
            b = np.broadcast_to(b, np.broadcast_shapes(b.shape, (n_out,)))
        w_fold, b_fold = _fold_one(node, bn, inits, w, b)

        # New, layer-private initializers: shared weights must not change for other users.
        w_name = f"{node.name}.weight_bnfolded"
        b_name = f"{node.name}.bias_bnfolded"
        graph.initializer.append(numpy_helper.from_array(w_fold, w_name))
        graph.initializer.append(numpy_helper.from_array(b_fold, b_name))
        node.input[1] = w_name
        if has_bias:
            node.input[2] = b_name
        else:
            node.input.append(b_name)
        if node.op_type == "Gemm":
            for a in node.attribute:
                if a.name == "beta":
                    a.f = 1.0
        pre_bn = node.output[0]
        node.output[0] = bn.output[0]
        remove.add(id(bn))
        folded[node.name] = FoldRecord(
            layer=node.name,
            op_type=node.op_type,
            bn_node=bn.name,
            pre_bn_tensor=pre_bn,
            weight_before=w,
            weight_after=w_fold,
            bias_before=b,
            bias_after=b_fold,
        )

    if remove:
        keep = [n for n in graph.node if id(n) not in remove]
        del graph.node[:]
        graph.node.extend(keep)
        _drop_unused_initializers(graph)
        # Shape info of removed tensors is stale; keep value_info of live tensors only.
        live = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
        vis = [vi for vi in graph.value_info if vi.name in live]
        del graph.value_info[:]
        graph.value_info.extend(vis)
    return FoldResult(model=model, folded=folded, skipped=skipped)


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    for n in graph.node:  # names read from subgraphs
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= {name for sn in a.g.node for name in sn.input}
            elif a.type == onnx.AttributeProto.GRAPHS:
                used |= {name for g in a.graphs for sn in g.node for name in sn.input}
    dropped = {t.name for t in graph.initializer if t.name not in used}
    if dropped:
        keep = [t for t in graph.initializer if t.name not in dropped]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        # Old-style models also list initializers among the graph inputs.
        ins = [i for i in graph.input if i.name not in dropped]
        del graph.input[:]
        graph.input.extend(ins)
