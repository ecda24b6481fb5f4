"""Small read-only helpers over an ``onnx.ModelProto`` graph.

Everything that knows *which* nodes are weighted layers and *how* their
weights map to output channels lives here, so BN folding, weight metrics and
weight matching agree on it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

#: Op types whose constant weight operand qaudit measures (docs/metrics.md, "Weights").
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def attr(node: onnx.NodeProto, name: str, default=None):
    """Value of a node attribute, or ``default`` when it is absent."""
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Tensor name -> the node that produces it."""
    out = {}
    for node in graph.node:
        for name in node.output:
            if name:
                out[name] = node
    return out


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> nodes that read it (subgraph reads are not followed)."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                out.setdefault(name, []).append(node)
    return out


class GraphIndex:
    """A graph's initializers, producers and first node of each name, built once.

    Per-layer look-ups through it are O(1): rebuilding these maps for each of a
    5,000-node chain's layers took minutes (quadratic).
    """

    def __init__(self, graph: onnx.GraphProto):
        self.inits = initializers(graph)
        self.prod = producers(graph)
        self.nodes: dict[str, tuple[int, onnx.NodeProto]] = {}
        for i, node in enumerate(graph.node):
            self.nodes.setdefault(node.name, (i, node))

    def first_node(self, *names: str) -> onnx.NodeProto | None:
        """The first node in graph order named one of ``names``, or ``None``."""
        hits = [self.nodes[n] for n in names if n in self.nodes]
        return min(hits, key=lambda h: h[0])[1] if hits else None


def graph_input_names(graph: onnx.GraphProto) -> list[str]:
    """Real inputs: graph inputs that are not also initializers (old exporters list both)."""
    inits = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


@dataclass(frozen=True)
class WeightedLayer:
    """A node with a constant weight operand, and how to read its output channels."""

    node: onnx.NodeProto
    weight_name: str
    weight_index: int  # position of the weight among node.input

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def op_type(self) -> str:
        return self.node.op_type

    def channel_matrix(self, w: np.ndarray) -> np.ndarray:
        """``w`` rearranged as ``[C_out, -1]``: one row per output channel (docs/metrics.md)."""
        return output_channel_matrix(self.node, w, self.weight_index)


def output_channel_matrix(node: onnx.NodeProto, w: np.ndarray, weight_index: int = 1) -> np.ndarray:
    """Rows = output channels of ``node`` for its weight ``w``.

    Conv: axis 0. ConvTranspose: weight is ``[C_in, C_out/g, k...]``; output
    channel ``g*(C_out/g) + j`` reads ``w[g-th block of C_in, j]``. Gemm: the
    output-feature axis of B (0 with transB=1, else 1). MatMul: the last axis of
    a constant B, or axis -2 of a constant A.
    """
    op = node.op_type
    if op == "Conv":
        return w.reshape(w.shape[0], -1)
    if op == "ConvTranspose":
        g = int(attr(node, "group", 1))
        cin, cout_g = w.shape[0], w.shape[1]
        blocks = w.reshape(g, cin // g, cout_g, -1).transpose(0, 2, 1, 3)
        return blocks.reshape(g * cout_g, -1)
    if op == "Gemm":
        if weight_index != 1:
            raise ValueError("Gemm weight must be input B")
        if attr(node, "transB", 0):
            return w.reshape(w.shape[0], -1)
        return w.T.reshape(w.shape[1], -1)
    if op == "MatMul":
        if weight_index == 1:
            return np.moveaxis(w, -1, 0).reshape(w.shape[-1], -1)
        return np.moveaxis(w, -2, 0).reshape(w.shape[-2], -1)
    raise ValueError(f"{op} is not a weighted layer")


def weighted_layers(graph: onnx.GraphProto) -> list[WeightedLayer]:
    """Weighted layers in graph order (Conv/ConvTranspose weight input 1, Gemm B,
    MatMul with one constant operand of rank >= 2)."""
    inits = initializers(graph)
    layers = []
    for node in graph.node:
        op = node.op_type
        if op in ("Conv", "ConvTranspose", "Gemm"):
            if len(node.input) > 1 and node.input[1] in inits:
                layers.append(WeightedLayer(node, node.input[1], 1))
        elif op == "MatMul":
            for idx in (1, 0):
                name = node.input[idx]
                if name in inits and len(inits[name].dims) >= 2 and node.input[1 - idx] not in inits:
                    layers.append(WeightedLayer(node, name, idx))
                    break
    return layers


def to_array(t: onnx.TensorProto, base_dir: str | Path | None = None) -> np.ndarray:
    """The tensor's values; one stored in an external file is read from ``base_dir``
    (the folder of the model that refers to it) without filling ``t`` with its bytes."""
    if base_dir is not None and external_data_helper.uses_external_data(t):
        full = onnx.TensorProto()
        full.CopyFrom(t)
        external_data_helper.load_external_data_for_tensor(full, str(base_dir))
        return numpy_helper.to_array(full)
    return numpy_helper.to_array(t)


def elem_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def with_outputs(model: onnx.ModelProto, names: Iterable[tuple[str, int]]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (``(tensor, elem_type)`` pairs)."""
    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for name, elem_type in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
            have.add(name)
    return m
