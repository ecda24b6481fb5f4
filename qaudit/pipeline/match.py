"""Stage 4a: pair each fp32 tensor with the integer tensor that approximates it.

What ONNX Runtime's quantizer does to names and nodes (seen on 1.32):

QDQ format
    An activation ``X`` is quantized by ``QuantizeLinear`` (input ``X``, output
    ``X_QuantizeLinear_Output``) and read back through ``DequantizeLinear``.
    When ``X`` is a graph output, the producer's output is renamed
    ``X_QuantizeLinear_Input`` and the DequantizeLinear output takes the name
    ``X``. A Relu/Clip after Conv/Gemm is *removed*: the Conv then writes the
    Relu's output name directly, so the pre-activation fp32 tensor has no twin.
    MaxPool/Flatten/Reshape/Transpose reuse their input's scale and zero point.
    A multi-output node (Split, TopK, LSTM, ...) gets one QuantizeLinear per
    quantized output, each measured on its own row.
QOperator format
    Integer ops (QLinearConv, QGemm, QLinearMatMul, QLinearAdd, ...) output
    ``X_quantized`` with scale/zero point initializers ``X_scale`` and
    ``X_zero_point``. A removed Relu is folded into the Conv's output encoding
    but the tensor keeps the *pre-activation* name, so qaudit re-targets it to
    the Relu's output (what the integers really hold). Pass-through ops
    (MaxPool, Flatten, ...) keep their input's encoding; a quantized Split
    names each output ``X`` as ``Xquantized`` (no underscore).

qaudit hooks the *integer* outputs (QuantizeLinear outputs, QLinear* outputs)
and dequantizes them itself with the scale and zero point stored in the graph.
Exposing those as graph outputs does not stop ORT from fusing
DequantizeLinear -> Conv -> QuantizeLinear into QLinearConv at its default
optimization level (checked: plain and instrumented sessions give bit-identical
outputs), so what is measured is what a deployment runs. With int8
activations, exposing a QuantizeLinear output stops ORT converting its pair to
uint8, which does break fusions: :func:`qaudit.pipeline.capture.instrumented_quantized`
converts those pairs first. Exposing the float
tensors between DQ and Q (what ``qdq_loss_debug`` does) would break those
fusions.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from qaudit.options import INTEGER_RANGES
from qaudit.pipeline.graph import GraphIndex, attr, consumers, initializers, producers
from qaudit.report import UnmatchedTensor

#: Activations ORT's quantizer removes after Conv/Gemm/MatMul (QDQ and QOperator, 1.32).
REMOVABLE_ACTIVATIONS = ("Relu", "Clip")
#: QOperator ops and the input positions of their *output* scale and zero point.
_QOP_OUTPUT_QPARAMS = {
    "QLinearConv": (6, 7),
    "QLinearMatMul": (6, 7),
    "QGemm": (7, 8),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
    "QLinearAveragePool": (3, 4),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearSoftmax": (3, 4),
    "QLinearConcat": (0, 1),
    "QLinearReduceMean": (3, 4),
}
_QOP_WEIGHT_INPUTS = {"QLinearConv": 3, "QGemm": 3, "QLinearMatMul": 3}


@dataclass(frozen=True)
class Encoding:
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    dtype: str  # a key of options.INTEGER_RANGES: "uint8", "int8", "uint16", "int16", "uint4", "int4"

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    @property
    def onnx_type(self) -> int:
        """The ONNX element type of the integer tensor (what a session output of it is declared as)."""
        return _ONNX_TYPES[self.dtype]

    def limits(self) -> tuple[float, float]:
        """Representable real range ``[scale*(qmin - zp), scale*(qmax - zp)]`` (per-tensor),
        ``[qmin, qmax]`` the integer range of the type."""
        qmin, qmax = INTEGER_RANGES[self.dtype]
        s = float(self.scale.reshape(-1)[0])
        zp = int(self.zero_point.reshape(-1)[0])
        return s * (qmin - zp), s * (qmax - zp)


@dataclass(frozen=True)
class Twin:
    """The integer tensor of the quantized graph that approximates fp32 tensor ``fp32_name``."""

    fp32_name: str
    quant_name: str
    encoding: Encoding
    producer: str  # node of the quantized graph that writes it
    fused: tuple[str, ...] = ()  # fp32 activation nodes folded into this encoding


@dataclass(frozen=True)
class Matching:
    twins: dict[str, Twin]  # fp32 tensor name -> twin
    unmatched: list[UnmatchedTensor]
    # Relu/Clip fp32 node name -> the fp32 tensor it was fused into
    fused_into: dict[str, str]
    #: fp32 tensors the quantized graph quantizes (:func:`quantized_activations`): each must
    #: appear exactly once in the report, as a row or an unmatched entry
    quantized: frozenset[str] = frozenset()
    #: converted edges: key (``fp32 tensor::converted``, numbered from the second) -> the twin that a
    #: QuantizeLinear re-quantizing a twin's DequantizeLinear output writes (ORT's mixed-precision
    #: fixer's ``convert``: the tensor at another type for some consumers). Measured as twins of
    #: the same fp32 tensor (:attr:`measured`) and reported as rows of their own
    converted: dict[str, Twin] = field(default_factory=dict)

    @property
    def measured(self) -> dict[str, Twin]:
        """Every integer tensor measured: the twins, then the converted edges."""
        return {**self.twins, **self.converted} if self.converted else self.twins


CONVERTED = "::converted"


def converted_edges(qmodel: onnx.ModelProto, twins: dict[str, Twin], qtensors=None) -> dict[str, Twin]:
    """The converted edges of ``twins`` (see :attr:`Matching.converted`): for each twin, each
    QuantizeLinear that reads the output of a DequantizeLinear of the twin, in graph order."""
    qtensors = quantized_tensors(qmodel) if qtensors is None else qtensors
    by_quant = {tw.quant_name: tw for tw in twins.values()}
    dq_of = {
        n.output[0]: by_quant[n.input[0]]
        for n in qmodel.graph.node
        if n.op_type == "DequantizeLinear" and n.input and n.output and n.input[0] in by_quant
    }
    out: dict[str, Twin] = {}
    for key, (qname, enc, qprod) in qtensors.items():
        tw = dq_of.get(key)
        if tw is None or qname == tw.quant_name:  # a graph output's own pair (``X_QuantizeLinear_Input``)
            continue
        n = sum(1 for c in out.values() if c.fp32_name == tw.fp32_name)
        out[f"{tw.fp32_name}{CONVERTED}{n + 1 if n else ''}"] = Twin(tw.fp32_name, qname, enc, qprod, tw.fused)
    return out


def _const(name: str, inits, prod) -> np.ndarray | None:
    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = prod.get(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(attr(node, "value"))
    return None


_ONNX_TYPES = {
    "uint8": onnx.TensorProto.UINT8,
    "int8": onnx.TensorProto.INT8,
    "uint16": onnx.TensorProto.UINT16,
    "int16": onnx.TensorProto.INT16,
    "uint4": onnx.TensorProto.UINT4,
    "int4": onnx.TensorProto.INT4,
}


def quantize_constant(name: str, inits, prod) -> np.ndarray | None:
    """The integers of ``QuantizeLinear(constant)`` (a weight stored as float and quantized in the
    graph, as some producers write it), computed as ONNX defines it: ``saturate(rint(x / scale) +
    zero_point)``, rounding half to even; ``None`` when ``name`` is not such a tensor."""
    node = prod.get(name)
    if node is None or node.op_type != "QuantizeLinear":
        return None
    x = _const(node.input[0], inits, prod)
    s = _const(node.input[1], inits, prod) if len(node.input) > 1 else None
    z = _const(node.input[2], inits, prod) if len(node.input) > 2 and node.input[2] else None
    if x is None or s is None:
        return None
    z = np.zeros(s.shape, np.uint8) if z is None else z
    if s.size > 1:
        shape = [1] * x.ndim
        shape[attr(node, "axis", 1)] = -1
        s, z = s.reshape(shape), z.reshape(shape)
    info = np.iinfo(z.dtype)
    q = np.rint(x.astype(np.float32) / s.astype(np.float32)) + z.astype(np.float32)
    return np.clip(q, info.min, info.max).astype(z.dtype)


def _dtype_name(arr: np.ndarray) -> str:
    """The quantized type of a zero point or of integer weights (``numpy_helper.to_array``
    gives 4-bit tensors unpacked, one ml_dtypes ``int4``/``uint4`` value per element)."""
    name = np.dtype(arr.dtype).name
    if name not in INTEGER_RANGES:
        raise ValueError(f"not a quantized integer type: {name}")
    return name


def quantized_tensors(qmodel: onnx.ModelProto) -> dict[str, tuple[str, Encoding, str]]:
    """Integer activation tensors of the quantized graph: key -> (tensor, encoding, producer).

    The key is the float tensor name the integer tensor stands for (suffixes stripped).
    """
    g = qmodel.graph
    inits = initializers(g)
    prod = producers(g)
    found: dict[str, tuple[str, Encoding, str]] = {}
    by_tensor: dict[str, Encoding] = {}

    def key_of(name: str) -> str:
        return name.removesuffix("_quantized")

    for node in g.node:
        if node.op_type not in _QOP_OUTPUT_QPARAMS and node.op_type != "QuantizeLinear" and len(node.output) > 1:
            # a multi-output pass-through op on integers (QOperator Split, "Xquantized"): every output
            enc = by_tensor.get(node.input[0]) if node.input else None
            for out in node.output:
                if enc is not None and out.endswith("quantized"):
                    by_tensor[out] = enc
                    key = key_of(out) if out.endswith("_quantized") else out.removesuffix("quantized")
                    found[key] = (out, enc, node.name)
            continue
        enc = None
        out = node.output[0] if node.output else ""
        if (
            node.op_type == "QuantizeLinear"
            and node.input[0] not in inits
            and _const(node.input[0], inits, prod) is None
        ):
            s, z = (
                _const(node.input[1], inits, prod),
                _const(node.input[2], inits, prod) if len(node.input) > 2 else None,
            )
            if s is not None:
                z = np.zeros(s.shape, np.uint8) if z is None else z
                enc = Encoding(s, z, attr(node, "axis", 1), _dtype_name(z))
                key = node.input[0].removesuffix("_QuantizeLinear_Input")
        elif node.op_type in _QOP_OUTPUT_QPARAMS:
            i_s, i_z = _QOP_OUTPUT_QPARAMS[node.op_type]
            if len(node.input) > i_z:
                s, z = _const(node.input[i_s], inits, prod), _const(node.input[i_z], inits, prod)
                if s is not None and z is not None:
                    enc = Encoding(s, z, None, _dtype_name(z))
                    key = key_of(out)
        elif out.endswith("_quantized") and node.input and node.input[0] in by_tensor:
            # pass-through op on integers (MaxPool, Flatten, Reshape, Transpose, ...)
            enc = by_tensor[node.input[0]]
            key = key_of(out)
        elif (
            out.endswith("_quantized")
            and node.input
            and node.input[0].endswith("_quantized")
            and node.input[0] in inits
        ):
            # an op reading a quantized constant table (QOperator Gather on an embedding):
            # the output carries the table's encoding, stored as <table>_scale / <table>_zero_point
            base = node.input[0][: -len("_quantized")]
            s, z = _const(base + "_scale", inits, prod), _const(base + "_zero_point", inits, prod)
            if s is not None and z is not None and s.size == 1:
                enc = Encoding(s, z, None, _dtype_name(z))
                key = key_of(out)
        if enc is not None and out:
            by_tensor[out] = enc
            found[key] = (out, enc, node.name)
    return found


def quantized_activations(qmodel: onnx.ModelProto) -> set[str]:
    """Names of the float tensors the quantized graph quantizes, in either format.

    The inputs of QuantizeLinear that are activations (not initializers or
    constants), and the outputs of QLinear*/QGemm ops, with the renaming rules
    above: ``X_QuantizeLinear_Input`` and ``X_quantized`` stand for ``X``. Computed
    from the quantized graph alone, independently of :func:`quantized_tensors`.
    """
    g = qmodel.graph
    inits, prod = initializers(g), producers(g)
    out = set()
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            if _const(node.input[0], inits, prod) is None:
                out.add(node.input[0].removesuffix("_QuantizeLinear_Input"))
        elif (node.op_type.startswith("QLinear") or node.op_type == "QGemm") and node.output:
            out.add(node.output[0].removesuffix("_quantized"))
    return out


def match(
    fp32: onnx.ModelProto, qmodel: onnx.ModelProto, excluded: dict[str, str] | None = None, fmt: str | None = None
) -> Matching:
    """Pair fp32 float tensors with integer twins; explain every tensor left without one.

    ``excluded``: node name -> why it was left in float (``--exclude``, or qaudit's own choice).
    ``fmt``: "qdq" or "qoperator", to name ops the format has no quantized form of.
    """
    from qaudit.pipeline.quantize import quantizable_op_types

    g = fp32.graph
    prod = producers(g)
    cons = consumers(g)
    inits = {t.name for t in g.initializer}
    qnames = {n.name for n in qmodel.graph.node}
    sorted_qnames = sorted(qnames)

    def has_quant_node_named_like(prefix: str) -> bool:
        """Some quantized node's name starts with ``prefix`` (bisection: a 5,000-node graph stays fast)."""
        i = bisect.bisect_left(sorted_qnames, prefix)
        return i < len(sorted_qnames) and sorted_qnames[i].startswith(prefix)

    qtensors = quantized_tensors(qmodel)
    quantizable = set(quantizable_op_types(fmt))

    vtypes = {vi.name: vi.type.tensor_type.elem_type for vi in list(g.value_info) + list(g.input) + list(g.output)}
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}

    candidates = [i.name for i in g.input if i.name not in inits and vtypes.get(i.name) in float_types]
    for n in g.node:
        if n.op_type == "Constant":
            continue
        candidates += [o for o in n.output if o and vtypes.get(o, onnx.TensorProto.FLOAT) in float_types]

    candidate_set = set(candidates)

    def removed_activation(name: str):
        users = cons.get(name, [])
        if len(users) == 1 and users[0].op_type in REMOVABLE_ACTIVATIONS and users[0].name not in qnames:
            return users[0]
        return None

    twins: dict[str, Twin] = {}
    fused_into: dict[str, str] = {}
    for key, (qname, enc, qprod) in qtensors.items():
        target, fused = key, []
        act = removed_activation(target)
        while act is not None:  # QOperator keeps the pre-activation name
            fused.append(act.name)
            target = act.output[0]
            act = removed_activation(target)
        if target not in prod and target not in candidate_set:
            continue
        twins[target] = Twin(target, qname, enc, qprod, tuple(fused))

    # QDQ: the Conv wrote the Relu output's name; record the fused activation too.
    for name, tw in list(twins.items()):
        p = prod.get(name)
        if p is not None and p.op_type in REMOVABLE_ACTIVATIONS and p.name not in qnames and not tw.fused:
            twins[name] = Twin(tw.fp32_name, tw.quant_name, tw.encoding, tw.producer, (p.name,))
    for tw in twins.values():
        for a in tw.fused:
            fused_into[a] = tw.fp32_name

    unmatched = []
    excluded = dict(excluded or {})
    for name in candidates:
        if name in twins:
            continue
        p = prod.get(name)
        op = p.op_type if p is not None else "Input"
        pname = p.name if p is not None else name
        act = removed_activation(name)
        if act is not None and act.output[0] in twins:
            kind, reason = (
                "fused",
                (
                    f"{act.op_type} '{act.name}' was removed by the quantizer and fused into this layer's "
                    f"output encoding; the layer is measured at '{act.output[0]}'"
                ),
            )
        elif p is not None and p.name in excluded:
            kind, reason = "excluded", excluded[p.name]
        elif p is not None and p.op_type not in quantizable:
            kind, reason = (
                "float-op",
                f"{p.op_type} is not quantized by ONNX Runtime; its output stays float in the quantized graph",
            )
        elif p is not None and p.name not in qnames and not has_quant_node_named_like(p.name):
            kind, reason = "removed", "producer no longer exists in the quantized graph"
        else:
            float_in = [
                i for i in (p.input if p is not None else []) if i in prod and i not in twins and i in candidate_set
            ]
            if float_in:
                kind, reason = (
                    "not-quantized",
                    (
                        f"{op} reads '{float_in[0]}', which is float in the quantized graph, so ONNX Runtime "
                        "leaves it in float too"
                    ),
                )
            else:
                kind, reason = (
                    "not-quantized",
                    "the quantizer inserted no QuantizeLinear for this tensor (it stays float)",
                )
        unmatched.append(UnmatchedTensor(name, pname, op, kind, reason))
    fp32_tensors = {n for n, p in prod.items() if p.op_type != "Constant"} | {i.name for i in g.input}
    quantized = frozenset(n for n in quantized_activations(qmodel) if n in fp32_tensors)
    converted = converted_edges(qmodel, twins, qtensors)
    return Matching(twins=twins, unmatched=unmatched, fused_into=fused_into, quantized=quantized, converted=converted)


def quantized_weight(
    qmodel: onnx.ModelProto,
    layer: str,
    op_type: str,
    weight_index: int,
    fp32_node: onnx.NodeProto,
    index: GraphIndex | None = None,
):
    """Dequantized weight that the quantized graph holds for ``layer``, or ``None``.

    Returns ``(array, encoding)``. Handles QDQ (weight -> DequantizeLinear ->
    layer) and QOperator (QLinearConv/QGemm/QLinearMatMul weight inputs).
    ``index``: ``GraphIndex(qmodel.graph)``, built once by a caller that asks for many layers.
    """
    from qaudit.pipeline.metrics import dequantize

    index = index or GraphIndex(qmodel.graph)
    inits, prod = index.inits, index.prod
    node = index.first_node(layer, layer + "_quant")
    if node is None:
        return None
    if node.op_type in _QOP_WEIGHT_INPUTS:
        i = _QOP_WEIGHT_INPUTS[node.op_type] if weight_index == 1 else 0
        names = node.input[i : i + 3]
        axis = None
    else:
        dq = prod.get(node.input[weight_index]) if len(node.input) > weight_index else None
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        names = list(dq.input) + [""] * (3 - len(dq.input))
        axis = attr(dq, "axis", 1)
    q = _const(names[0], inits, prod)
    if q is None:  # stored as float, quantized in the graph
        q = quantize_constant(names[0], inits, prod)
    s = _const(names[1], inits, prod)
    z = _const(names[2], inits, prod) if names[2] else None
    if q is None or s is None:
        return None
    z = np.zeros(s.shape, q.dtype) if z is None else z
    if s.size > 1 and axis is None:
        # QOperator per-channel: the output-channel axis of the weight
        axis = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0 if attr(fp32_node, "transB", 0) else 1}.get(
            op_type, q.ndim - 1
        )
    w = dequantize(q, s, z, axis=axis if s.size > 1 else None)
    return w, Encoding(s, z, axis, _dtype_name(q))


def _activation_floor(node: onnx.NodeProto, inits, prod) -> float | None:
    """The lowest value a Relu/Clip lets through (None: a Clip without a known lower bound)."""
    if node.op_type == "Relu":
        return 0.0
    if len(node.input) > 1 and node.input[1]:
        lo = _const(node.input[1], inits, prod)
        return None if lo is None else float(np.asarray(lo).reshape(-1)[0])
    lo = attr(node, "min")  # Clip before opset 11
    return None if lo is None else float(lo)


def unapplied_activations(fp32: onnx.ModelProto, qmodel: onnx.ModelProto, matching: Matching) -> list[str]:
    """Notes on Relu/Clip nodes the quantizer removed although the integers carrying their
    output can hold values below the activation's floor: the quantized model does not apply them.

    ORT removes a Relu/Clip after a quantized op and gives its output the op's encoding,
    counting on the op's output range having been narrowed to the activation's
    (``base_quantizer.adjust_tensor_ranges``). QOperator's pass-through ops (Unsqueeze,
    Reshape, Transpose, ...) keep their *input's* encoding instead, so a Relu after one is
    dropped while negative values still flow into the next layer (docs/ort-quirks.md #46;
    silero-vad's decoder: Unsqueeze then ReLU, in QOperator format).
    """
    g = fp32.graph
    prod = producers(g)
    inits = initializers(g)
    nodes = {n.name: n for n in g.node}
    qops = {n.name: n.op_type for n in qmodel.graph.node}
    out = []
    for tw in matching.twins.values():
        enc = tw.encoding
        lo_q = INTEGER_RANGES[enc.dtype][0]
        scale = float(np.min(enc.scale))
        lowest = float(np.min((lo_q - enc.zero_point.astype(np.float64)) * enc.scale.astype(np.float64)))
        for name in tw.fused:
            node = nodes.get(name)
            floor = None if node is None else _activation_floor(node, inits, prod)
            if floor is None or not lowest < floor - scale / 2:
                continue
            out.append(
                f"ONNX Runtime's quantizer removed {node.op_type} '{name}', but the integers that carry its output "
                f"('{tw.quant_name}', written by {qops.get(tw.producer, 'node')} '{tw.producer}') keep an encoding "
                f"that holds values down to {lowest:.4g} (scale {scale:.4g}, zero point "
                f"{int(np.max(enc.zero_point))}), below the {node.op_type}'s floor {floor:g}: the quantized model "
                f"does not apply this {node.op_type}, and '{tw.fp32_name}' is measured as it deploys "
                "(docs/ort-quirks.md #46)"
            )
    return out
