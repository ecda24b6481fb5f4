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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qaudit.pipeline.data import samples
from qaudit.pipeline.graph import with_outputs
from qaudit.pipeline.match import Matching
from qaudit.pipeline.measure import ActivationMeter, OutputKinds, OutputMeter, RuntimeMeter, output_kinds
from qaudit.pipeline.parallel import lockstep, shares, usable_cores
from qaudit.pipeline.runtimes import Loaded, OrtRuntime, Runtime
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
    #: the other runtimes' measurements (``--runtimes`` with more than one), else ``None``
    runtimes: RuntimeMeter | None = None

    #: how a Ray run sharded the capture (qaudit.distributed.sharded_capture); None: in this process
    ray: dict | None = None


@dataclass
class QuantizedSide:
    """One quantized graph to capture beside the fp32 graph (:func:`capture_many`): one run of an audit."""

    qmodel: onnx.ModelProto
    matching: Matching
    work: Path  # where its instrumented and isolated graphs are saved
    plain_path: Path | None = None  # the quantized model as saved (``None``: saved from ``qmodel``)


def capture(
    fp32_model: onnx.ModelProto,
    qmodel: onnx.ModelProto,
    matching: Matching,
    batches: Iterable[dict[str, np.ndarray]],
    work: Path,
    *,
    plain_path: Path | None = None,
    **options,
) -> Captured:
    """Run the instrumented fp32, quantized and isolated-error graphs in lockstep
    and stream their tensors into the meters.

    The twins are measured in shares of about equal size, one per usable core,
    each on its own thread (:func:`~qaudit.pipeline.parallel.lockstep`).
    ``options`` (keywords): ``labels``, ``outputs`` (what each model output holds, default:
    :func:`~qaudit.pipeline.measure.output_kinds`), ``isolated``, ``tensor_bytes``,
    ``on_batch`` (``on_batch(n)`` is called after each batch of ``n`` samples is measured),
    ``model_name``, ``runtimes`` and ``first``, as :func:`capture_many` takes them.

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
    return capture_many(fp32_model, [QuantizedSide(qmodel, matching, work, plain_path)], batches, work, **options)[0]


def capture_many(
    fp32_model: onnx.ModelProto,
    sides: list[QuantizedSide],
    batches: Iterable[dict[str, np.ndarray]],
    work: Path,
    *,
    labels: np.ndarray | None = None,
    outputs: OutputKinds | None = None,
    isolated: bool = True,
    tensor_bytes: dict[str, int] | None = None,
    on_batch: Callable[[int], None] | None = None,
    model_name: str = "the model",
    runtimes: Sequence[Runtime] | None = None,
    first: dict[str, np.ndarray] | None = None,
    fp32_file: str = "folded_instrumented.onnx",
) -> list[Captured]:
    """:func:`capture` of several quantized graphs of one fp32 graph (the runs of a multi-run
    audit) on one pass over ``batches``: the fp32 session runs once per batch, and every
    quantized graph consumes its outputs in turn.

    Every side must pair the same fp32 tensors (the fp32 session exposes them; exposing
    others could change how ORT fuses it, and each side's numbers must equal its own
    :func:`capture`'s). The lockstep's unit is one side on one batch: the measuring
    threads see each side's batches in order, and at most two units are alive at once
    (one measured while the next is computed), so the buffers alive are one batch's fp32
    outputs (two at a batch boundary) and two sides' quantized and isolated outputs:
    the same bound as one :func:`capture`, whatever the number of sides.
    ``on_batch(n)`` is called once per batch, after its last side is measured.

    ``runtimes`` (default: ORT's optimized CPU session): the first runs the quantized and
    isolated-error graphs as above; every other one runs each quantized graph once more per
    batch (:func:`open_runtime`, the same check per runtime), measured on its own thread
    into :attr:`Captured.runtimes` (a :class:`~qaudit.pipeline.measure.RuntimeMeter`).

    ``first``: the evaluation's first batch, when ``batches`` are a later shard of
    it (:mod:`qaudit.distributed`): the plain-session check runs on it, and what
    each output holds is decided from it, as a capture of every batch decides them
    (the shards' meters then merge into that capture's).

    ``work`` / ``fp32_file``: where the instrumented fp32 graph is saved; a model whose
    weights are external data must be saved in the folder of its data (:func:`save_model`).
    """
    if not sides:
        return []
    twins = list(sides[0].matching.twins)
    for side in sides[1:]:
        if set(side.matching.twins) != set(twins):
            raise ValueError("capture_many: every quantized graph must pair the same fp32 tensors")
    runtimes = tuple(runtimes) if runtimes else (OrtRuntime(),)
    vtypes = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(fp32_model.graph.value_info) + list(fp32_model.graph.input)
    }
    fp32_outs = [(n, vtypes.get(n, onnx.TensorProto.FLOAT)) for n in twins]
    fp32_session = make_session(save_model(with_outputs(fp32_model, fp32_outs), work / fp32_file), what=model_name)
    shapes = {
        vi.name: vi.type.tensor_type.shape
        for vi in [*fp32_model.graph.value_info, *fp32_model.graph.input, *fp32_model.graph.output]
        if vi.type.tensor_type.HasField("shape")
    }
    batches = iter(batches)
    own = next(batches, None)
    head = first if first is not None else own
    kinds = outputs or output_kinds(fp32_model, labelled=labels is not None)
    runners = [_QuantRunner(side, head, isolated, runtimes, shapes, kinds) for side in sides]
    if own is not None:
        batches = itertools.chain([own], batches)
    meters, out_meters, seen = [], [OutputMeter(kinds) for _ in sides], [0] * len(sides)
    if first is not None:  # a later shard: what each output holds decided as on the first batch
        a = run_named(fp32_session, first)
        for m in out_meters:
            m.prime(a)
        del a
    for side in sides:
        measured = side.matching.measured
        sizes = {n: (tensor_bytes or {}).get(tw.fp32_name, 1) for n, tw in measured.items()}
        share = shares(sizes, min(2, usable_cores()))
        meters.append([ActivationMeter(side.matching, s) for s in share] or [ActivationMeter(side.matching)])
    last = len(sides) - 1

    def units():  # (side, feeds, fp32 outputs): the fp32 session once per batch, each side in turn
        for feeds in batches:
            a = run_named(fp32_session, feeds)
            for r in range(len(sides)):
                yield r, feeds, a
            del a

    def run_unit(unit):
        r, feeds, a = unit
        b, c = runners[r].run(feeds, a)
        return a, b, c, [o.run(feeds) for o in runners[r].others]

    def measurer(i):
        def measure(unit, outs):
            r, feeds, _ = unit
            a, b, c, _ = outs
            if i < len(meters[r]):
                meters[r][i].update(a, b, c)
            if i == 0:
                n = samples(feeds)
                out_meters[r].update(a, b, labels[seen[r] : seen[r] + n] if labels is not None else None)
                seen[r] += n
                if r == last and on_batch is not None:
                    on_batch(n)

        return measure

    def measure_runtimes(unit, outs):
        r, feeds, _ = unit
        a, b, _, rest = outs
        if runners[r].rt_meter is not None:
            runners[r].rt_meter.update(a, b, rest, labels, samples(feeds))

    n_measures = max(len(m) for m in meters)
    extra = [measure_runtimes] if len(runtimes) > 1 else []
    lockstep(run_unit, units(), [measurer(i) for i in range(n_measures)] + extra, size=lambda unit: samples(unit[1]))
    return [
        Captured(
            ActivationMeter.combine(meters[r]), out_meters[r], seen[r], tuple(runners[r].differed), runners[r].rt_meter
        )
        for r in range(len(sides))
    ]


class _QuantRunner:
    """The runs of one quantized graph: instrumented, plain (if it differs on the first batch) and
    isolated in the first runtime, and the quantized graph in every other runtime (:func:`open_runtime`)."""

    def __init__(self, side: QuantizedSide, head, isolated: bool, runtimes, shapes, kinds):
        qmodel, matching, work = side.qmodel, side.matching, side.work
        first = runtimes[0]
        plain_path = side.plain_path or save_model(qmodel, work / "quantized_plain.onnx")
        elems = {tw.quant_name: tw.encoding.onnx_type for tw in matching.measured.values()}
        self.q_run = first.load(plain_path, elems, advice=QUANTIZER_AT_FAULT)
        self.shifted = set(self.q_run.shifted)
        self.out_names = [o.name for o in qmodel.graph.output]
        self.plain, self.differed = None, []
        if head is not None:
            plain = first.load(plain_path, {}, advice=QUANTIZER_AT_FAULT)
            ref, got = plain.run(head), self.q_run.run(head)
            self.differed = [n for n in self.out_names if not _identical(ref[n], got[n])]
            del ref, got
            if self.differed:  # the instrumented graph is not the deployed one: keep the plain session
                self.plain = plain
        twin_elems = {tw.quant_name: tw.encoding.onnx_type for tw in matching.twins.values()}
        self.others = [open_runtime(rt, plain_path, twin_elems, head, self.out_names) for rt in runtimes[1:]]
        self.rt_meter = None
        if self.others:
            names = [first.name] + [o.runtime.name for o in self.others]
            self.rt_meter = RuntimeMeter(matching, kinds, names, self.others)
        self.iso_run, self.iso_inputs = None, {}
        if isolated and matching.twins:
            # the new inputs' rank only where the runtime needs it (OpenVINO): ORT checks a declared rank
            # against the data, and an inferred value_info's rank can be wrong (ddddocr's captcha)
            ranks = None if isinstance(first, OrtRuntime) else shapes
            iso_model, self.iso_inputs = isolated_model(qmodel, matching.twins, self.shifted, matching.converted, ranks)
            self.iso_run = first.load(
                save_model(iso_model, work / "quantized_isolated.onnx"), {}, "the isolated-error graph"
            )
            del iso_model  # a copy of the quantized graph's weights: the session has its own

    def run(self, feeds, a):
        """The quantized and isolated outputs on ``feeds`` (``a``: the fp32 graph's outputs on them)."""
        b = self.q_run.run(feeds)
        if self.plain is not None:  # the instrumented graph differed from a plain session: outputs from the plain one
            b.update((n, v) for n, v in self.plain.run(feeds).items() if n in self.out_names)
        for name in self.shifted:  # back to the int8 values the deployed graph holds (exact: v - 128)
            b[name] = _to_int8(b[name])
        c = None
        if self.iso_run is not None:
            iso_feeds = dict(feeds)
            iso_feeds.update({inp: a[name] for name, inp in self.iso_inputs.items()})
            c = self.iso_run.run(iso_feeds)
            for name in self.shifted:
                c[name] = _to_int8(c[name])
        return b, c


@dataclass
class OpenRuntime:
    """One more runtime of the capture: its instrumented model, checked on the first batch (:func:`open_runtime`)."""

    runtime: object
    loaded: Loaded | None  # None: the runtime cannot run the model at all (``reason``)
    plain: Loaded | None = None  # kept when exposing the tensors changed the outputs: the outputs come from it
    reason: str | None = None  # why nothing is measurable in this runtime
    layers_reason: str | None = None  # why no layer is measurable (the outputs are)
    unexposed: dict[str, str] = field(default_factory=dict)  # quantized tensor -> why not measurable
    differed: tuple[str, ...] = ()
    out_names: tuple[str, ...] = ()

    def run(self, feeds) -> dict[str, np.ndarray] | None:
        if self.loaded is None:
            return None
        got = self.loaded.run(feeds)
        if self.plain is not None:
            got.update((n, v) for n, v in self.plain.run(feeds).items() if n in self.out_names)
        for name in self.loaded.shifted:
            if name in got:
                got[name] = _to_int8(got[name])
        return got


def open_runtime(rt, plain_path: Path, elems: dict[str, int], head, out_names) -> OpenRuntime:
    """``rt`` ready to run the quantized model with its twins exposed, as faithfully as it allows.

    The plain model must load (else nothing is measurable in ``rt``, with the reason); the
    instrumented one is run on the first batch ``head`` beside the plain one: outputs that are
    not bit-identical mean exposing the tensors changed what ``rt`` computes, so its layer rows
    are not measurable there and its outputs come from the plain model. A model that loads
    only without the extra outputs is measured at its outputs."""
    from qaudit.errors import ModelError

    try:
        plain = rt.load(plain_path, {})
    except ModelError as e:
        return OpenRuntime(rt, None, reason=str(e))
    if not rt.can_expose_intermediates:
        return OpenRuntime(rt, plain, layers_reason=rt.reason, out_names=tuple(out_names))
    try:
        loaded = rt.load(plain_path, elems)
    except ModelError as e:
        why = f"{rt.name} cannot run the model with its intermediate tensors exposed ({e})"
        return OpenRuntime(rt, plain, layers_reason=why, out_names=tuple(out_names))
    opened = OpenRuntime(rt, loaded, unexposed=dict(loaded.unexposed), out_names=tuple(out_names))
    if head is not None:
        ref, got = plain.run(head), loaded.run(head)
        lost = [n for n in out_names if n not in ref]
        if lost:  # an output the runtime renamed: nothing of it can be paired
            return OpenRuntime(rt, None, reason=f"{rt.name} gives no output named {', '.join(lost)}")
        opened.differed = tuple(n for n in out_names if not _identical(ref[n], got[n]))
        if opened.differed:
            opened.plain = plain
            opened.layers_reason = (
                f"exposing the intermediate tensors changes what {rt.name} computes (outputs "
                f"{', '.join(opened.differed)} differed from the plain model's on the first batch)"
            )
    return opened


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
    return expose(qmodel, {tw.quant_name: tw.encoding.onnx_type for tw in twins.values()}, ort_converts_int8_qdq())


def expose(qmodel: onnx.ModelProto, elem: dict[str, int], convert: bool = True) -> tuple[onnx.ModelProto, set[str]]:
    """A copy of ``qmodel`` with the integer tensors ``elem`` names (``{name: ONNX type}``) as outputs,
    the int8 pairs ORT's CPU provider would convert converted first when ``convert``
    (see :func:`instrumented_quantized`)."""
    from onnx import numpy_helper

    m = copy.deepcopy(qmodel)
    g = m.graph
    hooked = set(elem)
    shifted: set[str] = set()
    if convert:
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


def isolated_model(
    qmodel: onnx.ModelProto, twins, shifted=frozenset(), converted=None, shapes: dict | None = None
) -> tuple[onnx.ModelProto, dict[str, str]]:
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

    ``converted``: the converted edges (:attr:`~qaudit.pipeline.match.Matching.converted`),
    exposed too but not rewired: each re-quantizes its twin's isolated values, so it holds
    the layer's own error as the consumers of the other type read it.

    ``shapes``: ``{fp32 tensor: TensorShapeProto}``: the new inputs get the rank (OpenVINO needs it).

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
        vi = helper.make_tensor_value_info(inp, onnx.TensorProto.FLOAT, None)
        if shapes and tw.fp32_name in shapes:  # the rank only (OpenVINO needs it), every dim left free
            for _ in shapes[tw.fp32_name].dim:
                vi.type.tensor_type.shape.dim.add()
        g.input.append(vi)
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
    exposed = {**by_quant, **{tw.quant_name: tw for tw in (converted or {}).values()}}
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.output and node.output[0] in shifted:
            u8 = f"{node.output[0]}::iso_zp_u8"
            zp = int(np.asarray(exposed[node.output[0]].encoding.zero_point).reshape(-1)[0])
            g.initializer.append(numpy_helper.from_array(np.array(zp + 128, np.uint8), u8))
            node.input[2] = u8
    for tw in exposed.values():
        if tw.quant_name not in have:
            # an int8 pair ORT converts in the plain graph is exposed as the uint8 it becomes
            elem = onnx.TensorProto.UINT8 if tw.quant_name in shifted else tw.encoding.onnx_type
            g.output.append(helper.make_tensor_value_info(tw.quant_name, elem, None))
    return m, feeds
