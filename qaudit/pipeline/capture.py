"""Stage 4b: expose intermediate tensors and run fp32 and quantized graphs in lockstep.

Sessions run with ONNX Runtime's default graph optimizations
(ORT_ENABLE_ALL), so the quantized graph executes the fused integer kernels a
deployment would run (see :mod:`qaudit.pipeline.match` for why hooking integer tensors
keeps those fusions). Only one batch of intermediate tensors is alive at a
time.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx


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
            elem = onnx.TensorProto.INT8 if tw.encoding.dtype == "int8" else onnx.TensorProto.UINT8
            g.output.append(helper.make_tensor_value_info(tw.quant_name, elem, None))
    return m, feeds
