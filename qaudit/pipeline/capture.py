"""Stage 4b: expose the twins and run the fp32, quantized and isolated graphs in lockstep.

Sessions run with ONNX Runtime's default graph optimizations
(ORT_ENABLE_ALL), so the quantized graph executes the fused integer kernels a
deployment would run (see :mod:`qaudit.pipeline.match` for why hooking integer tensors
keeps those fusions, and :func:`instrumented_quantized` for the int8 pairs that
must be converted first). Only one batch of intermediate tensors is alive at a
time.
"""

from __future__ import annotations

import copy
import functools
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from qaudit.pipeline.data import samples
from qaudit.pipeline.graph import with_outputs
from qaudit.pipeline.match import Matching
from qaudit.pipeline.measure import ActivationMeter, OutputKinds, OutputMeter, output_kinds
from qaudit.pipeline.parallel import lockstep, shares, usable_cores
from qaudit.pipeline.session import QUANTIZER_AT_FAULT, make_session, run_named, save_model


@dataclass
class Captured:
    """What the capture measured: every twin's statistics, the outputs', and how many samples."""

    meter: ActivationMeter
    outputs: OutputMeter
    samples: int
    #: graph outputs on which the instrumented quantized graph differed from a plain session on the
    #: first batch: every output is then measured from a plain session (see :func:`capture`)
    plain_outputs: tuple[str, ...] = ()
    #: how a Ray run sharded the capture (qaudit.distributed.sharded_capture); None: in this process
    ray: dict | None = None


def capture(
    fp32_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    matching: Matching,
    batches: Iterable[dict[str, np.ndarray]],
    work: Path,
    *,
    labels: np.ndarray | None = None,
    outputs: OutputKinds | None = None,
    isolated: bool = True,
    tensor_bytes: dict[str, int] | None = None,
    on_batch: Callable[[int], None] | None = None,
    model_name: str = "the model",
    plain_path: Path | None = None,
    first: dict[str, np.ndarray] | None = None,
) -> Captured:
    """Run the instrumented fp32, quantized and isolated-error graphs in lockstep
    and stream their tensors into the meters.

    The twins are measured in shares of about equal size, one per usable core,
    each on its own thread (:func:`~qaudit.pipeline.parallel.lockstep`).
    ``on_batch(n)`` is called after each batch of ``n`` samples is measured.
    ``outputs``: what each model output holds (default: :func:`~qaudit.pipeline.measure.output_kinds`).

    Deployment truth is checked, not assumed: the first batch also runs on a plain
    session of the quantized model (``plain_path``, saved from ``qmodel`` if not
    given). When the instrumented graph's outputs are bit-identical, as they are
    for every format and type qaudit knows (:func:`instrumented_quantized`), the
    plain session is dropped; otherwise it is kept, the model outputs are measured
    from it, and :attr:`Captured.plain_outputs` names the outputs that differed
    (the layer rows still come from the instrumented graph).

    ``first``: the evaluation's first batch, when ``batches`` are a later shard of
    it (:mod:`qaudit.distributed`): the plain-session check runs on it, and what
    each output holds is decided from it, as a capture of every batch decides them
    (the shards' meters then merge into that capture's).
    """
    vtypes = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(fp32_model.graph.value_info) + list(fp32_model.graph.input)
    }
    fp32_outs = [(n, vtypes.get(n, onnx.TensorProto.FLOAT)) for n in matching.twins]
    fp32_session = make_session(
        save_model(with_outputs(fp32_model, fp32_outs), work / "folded_instrumented.onnx"), what=model_name
    )
    q_instrumented, shifted = instrumented_quantized(qmodel, matching.twins)
    q_session = make_session(
        save_model(q_instrumented, work / "quantized_instrumented.onnx"),
        what="the quantized model",
        advice=QUANTIZER_AT_FAULT,
    )
    batches = iter(batches)
    own = next(batches, None)
    head = first if first is not None else own
    out_names = [o.name for o in qmodel.graph.output]
    plain, differed = None, []
    if head is not None:
        plain = make_session(
            plain_path or save_model(qmodel, work / "quantized_plain.onnx"),
            what="the quantized model",
            advice=QUANTIZER_AT_FAULT,
        )
        ref = dict(zip(out_names, plain.run(out_names, head)))
        got = dict(zip(out_names, q_session.run(out_names, head)))
        differed = [n for n in out_names if not _identical(ref[n], got[n])]
        del ref, got
        if not differed:
            plain = None  # the instrumented graph is the deployed one: free the second session
    if own is not None:
        batches = itertools.chain([own], batches)
    iso_session, iso_inputs = None, {}
    if isolated and matching.twins:
        iso_model, iso_inputs = isolated_model(qmodel, matching.twins, shifted)
        iso_session = make_session(
            save_model(iso_model, work / "quantized_isolated.onnx"),
            what="the isolated-error graph",
            advice=QUANTIZER_AT_FAULT,
        )
        del iso_model  # a copy of the quantized graph's weights: the session has its own

    sizes = {n: (tensor_bytes or {}).get(n, 1) for n in matching.twins}
    meters = [ActivationMeter(matching, share) for share in shares(sizes, min(2, usable_cores()))] or [
        ActivationMeter(matching)
    ]
    out_meter = OutputMeter(outputs or output_kinds(fp32_model, labelled=labels is not None))
    if first is not None:
        out_meter.prime(run_named(fp32_session, first))
    seen = 0

    def run_batch(feeds):
        a = run_named(fp32_session, feeds)
        b = run_named(q_session, feeds)
        if plain is not None:  # the instrumented graph differed from a plain session: outputs from the plain one
            b.update(zip(out_names, plain.run(out_names, feeds)))
        for name in shifted:  # back to the int8 values the deployed graph holds (exact: v - 128)
            b[name] = _to_int8(b[name])
        c = None
        if iso_session is not None:
            iso_feeds = dict(feeds)
            iso_feeds.update({inp: a[name] for name, inp in iso_inputs.items()})
            c = run_named(iso_session, iso_feeds)
            for name in shifted:
                c[name] = _to_int8(c[name])
        return a, b, c

    def measurer(meter, first):
        def measure(feeds, outs):
            nonlocal seen
            a, b, c = outs
            meter.update(a, b, c)
            if first:
                n = samples(feeds)
                out_meter.update(a, b, labels[seen : seen + n] if labels is not None else None)
                seen += n
                if on_batch is not None:
                    on_batch(n)

        return measure

    lockstep(run_batch, batches, [measurer(m, i == 0) for i, m in enumerate(meters)])
    return Captured(ActivationMeter.combine(meters), out_meter, seen, tuple(differed))


def _to_int8(v: np.ndarray) -> np.ndarray:
    """uint8 ``q + 128`` back to int8 ``q``, exactly (flip the top bit)."""
    return np.bitwise_xor(v, np.uint8(0x80)).view(np.int8)


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")


def instrumented_quantized(qmodel: onnx.ModelProto, twins) -> tuple[onnx.ModelProto, set[str]]:
    """The quantized graph with every twin's integer tensor as an output, fused as a plain session fuses it.

    On x86, ONNX Runtime's ``QDQS8ToU8Transformer`` rewrites each int8
    QuantizeLinear -> DequantizeLinear pair to uint8 (zero point + 128), but only
    when the QuantizeLinear output has exactly one consumer and is *not* a graph
    output. Exposing a twin would leave its pair in int8 beside neighbours
    converted to uint8, and the QDQ fusions that need equal input types
    (QLinearMatMul of two activations, QLinearAdd, ...) would then fall back to
    float kernels: the instrumented graph would not be the deployed one
    (docs/ort-quirks.md). So the pairs ORT would convert in the plain graph are
    converted here first, exactly as ORT does; the exposed tensor then holds
    ``q + 128`` as uint8. Returns the model and the quantized names so shifted:
    :func:`capture` maps them back to int8 (``v ^ 0x80``), the values the
    deployed graph holds.
    """
    from onnx import numpy_helper

    m = copy.deepcopy(qmodel)
    g = m.graph
    hooked = {tw.quant_name for tw in twins.values()}
    shifted: set[str] = set()
    if ort_converts_int8_qdq():
        inits = {t.name: t for t in g.initializer}
        edges: dict[str, list[onnx.NodeProto]] = {}
        for node in g.node:
            for name in node.input:
                if name:
                    edges.setdefault(name, []).append(node)
        outputs = {o.name for o in g.output}

        def int8_zp(node):
            zp = inits.get(node.input[2]) if len(node.input) == 3 else None
            if zp is None or zp.data_type != onnx.TensorProto.INT8:
                return None
            arr = numpy_helper.to_array(zp)
            return int(arr.reshape(-1)[0]) if arr.size == 1 else None

        for q in g.node:
            if q.op_type != "QuantizeLinear" or q.domain not in ("", "ai.onnx") or not q.output:
                continue
            t = q.output[0]
            users = edges.get(t, [])
            if t not in hooked or t in outputs or len(users) != 1 or users[0].op_type != "DequantizeLinear":
                continue
            dq = users[0]
            # EnsureUniqueDQForNodeUnit runs first and duplicates a DQ with several consumers
            # (or a consumer and a graph output): the pair then has several edges, and stays int8
            dq_users = edges.get(dq.output[0], [])
            if len(dq_users) > 1 or (dq_users and dq.output[0] in outputs):
                continue
            zp = int8_zp(q)
            if zp is None or zp != int8_zp(dq):
                continue
            u8 = f"{q.input[2]}::u8"
            if u8 not in inits:
                inits[u8] = numpy_helper.from_array(np.array(zp + 128, np.uint8), u8)
                g.initializer.append(inits[u8])
            q.input[2] = dq.input[2] = u8
            shifted.add(t)
    # each twin as the type its graph holds, an int8 pair converted above as the uint8 it became
    elem = {tw.quant_name: tw.encoding.onnx_type for tw in twins.values()}
    outs = [(n, onnx.TensorProto.UINT8 if n in shifted else t) for n, t in elem.items()]
    return with_outputs(m, outs), shifted


@functools.cache
def ort_converts_int8_qdq() -> bool:
    """Whether this onnxruntime rewrites int8 Q -> DQ pairs to uint8 (x86: yes; ARM: int8 is allowed)."""
    import tempfile

    import onnxruntime as ort
    from onnx import TensorProto, helper

    from qaudit.pipeline.session import no_spinning

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq"),
    ]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [3])]
    graph = helper.make_graph(
        nodes,
        "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with tempfile.TemporaryDirectory(prefix="qaudit-probe-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        no_spinning(so)
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = f"{tmp}/optimized.onnx"
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        optimized = onnx.load(so.optimized_model_filepath)
    q = next((n for n in optimized.graph.node if n.op_type == "QuantizeLinear"), None)
    zps = {t.name: t.data_type for t in optimized.graph.initializer}
    return q is not None and zps.get(q.input[2]) == TensorProto.UINT8


def isolated_model(qmodel: onnx.ModelProto, twins, shifted=frozenset()) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The quantized graph rewired so that every layer reads *fp32* activations.

    Every consumer of a hooked integer tensor ``t`` (the twin of fp32 tensor
    ``x``) reads instead ``QuantizeLinear(x_fp32, scale_t, zp_t)``, where
    ``x_fp32`` is a new graph input fed with the fp32 graph's values. Each
    twin's producer then sees its inputs quantized from fp32 values, so the
    twin carries only that layer's own quantization error: the *isolated*
    error of every layer at once, in QDQ and QOperator graphs alike.

    ``shifted``: the twins :func:`instrumented_quantized` converted to uint8. Their
    QuantizeLinear (now read by no node) gets the uint8 zero point too, so every
    layer fuses as in the deployed graph (the new QuantizeLinear -> DequantizeLinear
    pairs ORT converts itself); their outputs hold ``q + 128`` likewise.

    Returns the model (outputs: every twin) and ``{fp32 tensor: new input name}``.
    """
    from onnx import helper, numpy_helper

    m = copy.deepcopy(qmodel)
    g = m.graph
    by_quant = {tw.quant_name: tw for tw in twins.values()}
    feeds: dict[str, str] = {}
    new_nodes = []
    for tw in by_quant.values():
        inp = f"{tw.fp32_name}::fp32"
        q_out = f"{tw.quant_name}::isolated_q"
        enc = tw.encoding
        scale = numpy_helper.from_array(np.asarray(enc.scale, np.float32), f"{tw.quant_name}::iso_scale")
        zp = numpy_helper.from_array(np.asarray(enc.zero_point), f"{tw.quant_name}::iso_zp")
        g.initializer.extend([scale, zp])
        kw = {"axis": int(enc.axis)} if not enc.per_tensor and enc.axis is not None else {}
        new_nodes.append(
            helper.make_node(
                "QuantizeLinear", [inp, scale.name, zp.name], [q_out], name=f"{tw.quant_name}::isolate", **kw
            )
        )
        g.input.append(helper.make_tensor_value_info(inp, onnx.TensorProto.FLOAT, None))
        feeds[tw.fp32_name] = inp
    rename = {tw.quant_name: f"{tw.quant_name}::isolated_q" for tw in by_quant.values()}
    for node in g.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    # keep the graph topologically sorted: the new QuantizeLinear nodes read graph inputs only
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    have = {o.name for o in g.output}
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.output and node.output[0] in shifted:
            u8 = f"{node.output[0]}::iso_zp_u8"
            zp = int(np.asarray(by_quant[node.output[0]].encoding.zero_point).reshape(-1)[0])
            g.initializer.append(numpy_helper.from_array(np.array(zp + 128, np.uint8), u8))
            node.input[2] = u8
    for tw in by_quant.values():
        if tw.quant_name not in have:
            # an int8 pair ORT converts in the plain graph is exposed as the uint8 it becomes
            elem = onnx.TensorProto.UINT8 if tw.quant_name in shifted else tw.encoding.onnx_type
            g.output.append(helper.make_tensor_value_info(tw.quant_name, elem, None))
    return m, feeds
