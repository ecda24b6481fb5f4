"""Stage 4b: expose the twins and run the fp32, quantized and isolated graphs in lockstep.

Sessions run with ONNX Runtime's default graph optimizations
(ORT_ENABLE_ALL), so the quantized graph executes the fused integer kernels a
deployment would run (see :mod:`qaudit.pipeline.match` for why hooking integer tensors
keeps those fusions). Only one batch of intermediate tensors is alive at a
time.
"""

from __future__ import annotations

import copy
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
) -> Captured:
    """Run the instrumented fp32, quantized and isolated-error graphs in lockstep
    and stream their tensors into the meters.

    The twins are measured in shares of about equal size, one per usable core,
    each on its own thread (:func:`~qaudit.pipeline.parallel.lockstep`).
    ``on_batch(n)`` is called after each batch of ``n`` samples is measured.
    ``outputs``: what each model output holds (default: :func:`~qaudit.pipeline.measure.output_kinds`).
    """
    vtypes = {
        vi.name: vi.type.tensor_type.elem_type
        for vi in list(fp32_model.graph.value_info) + list(fp32_model.graph.input)
    }
    fp32_outs = [(n, vtypes.get(n, onnx.TensorProto.FLOAT)) for n in matching.twins]
    q_outs = [(tw.quant_name, tw.encoding.onnx_type) for tw in matching.twins.values()]
    fp32_session = make_session(
        save_model(with_outputs(fp32_model, fp32_outs), work / "folded_instrumented.onnx"), what=model_name
    )
    q_session = make_session(
        save_model(with_outputs(qmodel, q_outs), work / "quantized_instrumented.onnx"),
        what="the quantized model",
        advice=QUANTIZER_AT_FAULT,
    )
    iso_session, iso_inputs = None, {}
    if isolated and matching.twins:
        iso_model, iso_inputs = isolated_model(qmodel, matching.twins)
        iso_session = make_session(
            save_model(iso_model, work / "quantized_isolated.onnx"),
            what="the isolated-error graph",
            advice=QUANTIZER_AT_FAULT,
        )

    sizes = {n: (tensor_bytes or {}).get(n, 1) for n in matching.twins}
    meters = [ActivationMeter(matching, share) for share in shares(sizes, min(2, usable_cores()))] or [
        ActivationMeter(matching)
    ]
    out_meter = OutputMeter(outputs or output_kinds(fp32_model, labelled=labels is not None))
    seen = 0

    def run_batch(feeds):
        a = run_named(fp32_session, feeds)
        b = run_named(q_session, feeds)
        c = None
        if iso_session is not None:
            iso_feeds = dict(feeds)
            iso_feeds.update({inp: a[name] for name, inp in iso_inputs.items()})
            c = run_named(iso_session, iso_feeds)
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
    return Captured(ActivationMeter.combine(meters), out_meter, seen)


def isolated_model(qmodel: onnx.ModelProto, twins) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The quantized graph rewired so that every layer reads *fp32* activations.

    Every consumer of a hooked integer tensor ``t`` (the twin of fp32 tensor
    ``x``) reads instead ``QuantizeLinear(x_fp32, scale_t, zp_t)``, where
    ``x_fp32`` is a new graph input fed with the fp32 graph's values. Each
    twin's producer then sees its inputs quantized from fp32 values, so the
    twin carries only that layer's own quantization error: the *isolated*
    error of every layer at once, in QDQ and QOperator graphs alike.

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
    for tw in by_quant.values():
        if tw.quant_name not in have:
            g.output.append(helper.make_tensor_value_info(tw.quant_name, tw.encoding.onnx_type, None))
    return m, feeds
