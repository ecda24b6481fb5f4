"""Stage 2a: control flow. A top-level ``If`` whose condition is constant over the data
is replaced by the branch it takes; control flow that cannot be removed and holds
layers is refused.

Why (onnxruntime 1.32): ORT's calibrator calibrates only the main graph's tensors,
so the layers inside an If branch or a Loop/Scan body get no range: they stay in
float without a word (QDQ), and when nothing outside is calibrated the calibrator
fails with "Histogram has not been collected" (docs/ort-quirks.md). Audio models
(silero-vad) put the whole network inside an If on the sample-rate input.

The condition is evaluated on every calibration and evaluation sample by a
session that computes only the conditions (the nodes they depend on). When it
takes one value, the If node is replaced in place by the taken branch: the
branch's nodes and initializers join the main graph, its outer-scope reads keep
working, its outputs are renamed to the If's outputs (so every downstream tensor
keeps its name), and names that would collide get a suffix. An If lifted out of
the taken branch is handled the same way on the next pass.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qaudit.errors import ModelError
from qaudit.pipeline.graph import WEIGHTED_OPS, attr, initializers
from qaudit.pipeline.transform import GraphChange, all_tensor_names, ensure_node_names, unique_name

CONTROL_FLOW_OPS = ("If", "Loop", "Scan")

#: Layers that make control flow matter: what an audit measures (weighted layers, recurrent layers).
LAYER_OPS = frozenset(WEIGHTED_OPS) | {"LSTM", "GRU", "RNN", "Attention"}

#: Passes over the graph: each inlines the top-level Ifs and lifts the Ifs of their branches.
MAX_DEPTH = 8


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    out = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def layers_inside(node: onnx.NodeProto) -> Counter:
    """``{op_type: count}`` of the layers anywhere inside ``node``'s subgraphs."""
    found: Counter = Counter()
    for g in subgraphs(node):
        for n in g.node:
            if n.op_type in LAYER_OPS:
                found[n.op_type] += 1
            found += layers_inside(n)
    return found


def _describe(found: Counter) -> str:
    return ", ".join(f"{n} {op}" for op, n in found.most_common())


def _reads(node: onnx.NodeProto) -> set[str]:
    """Names ``node`` reads: its inputs and (over-approximated) every name its subgraphs read."""
    names = set(node.input)
    for g in subgraphs(node):
        for n in g.node:
            names |= _reads(n)
        names |= {o.name for o in g.output}
    return names


def _names(graph: onnx.GraphProto, skip: onnx.NodeProto | None = None) -> set[str]:
    """Value names of ``graph`` and its subgraphs, leaving out ``skip``'s subgraphs."""
    names = {i.name for i in graph.input} | {o.name for o in graph.output} | {t.name for t in graph.initializer}
    names |= {vi.name for vi in graph.value_info}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        if node is not skip:
            for g in subgraphs(node):
                names |= all_tensor_names(g)
    names.discard("")
    return names


def condition_model(model: onnx.ModelProto, conditions: list[str]) -> onnx.ModelProto:
    """A model computing only ``conditions`` (as ``qaudit_condition_<k>``) from the model's inputs."""
    graph = model.graph
    need, keep = set(conditions), []
    for node in reversed(graph.node):  # ONNX graphs are topologically sorted
        if need.intersection(node.output):
            keep.append(node)
            need |= _reads(node)
    nodes = list(reversed(keep))
    outs = []
    for k, c in enumerate(conditions):
        nodes.append(helper.make_node("Identity", [c], [f"qaudit_condition_{k}"], name=f"qaudit_condition_{k}"))
        outs.append(helper.make_tensor_value_info(f"qaudit_condition_{k}", onnx.TensorProto.BOOL, None))
    inits = [t for t in graph.initializer if t.name in need]
    inputs = [i for i in graph.input if i.name not in {t.name for t in graph.initializer} or i.name in need]
    g = helper.make_graph(nodes, "qaudit_conditions", inputs, outs, inits)
    m = helper.make_model(g, opset_imports=list(model.opset_import))
    m.ir_version = model.ir_version
    return m


def evaluate_conditions(
    model: onnx.ModelProto, conditions: list[str], feeds: Iterable[dict[str, np.ndarray]]
) -> tuple[list[Counter], int]:
    """How often each condition was true and false over ``feeds``, and the number of runs."""
    from qaudit.pipeline.session import make_session

    seen = [Counter() for _ in conditions]
    runs = 0
    with tempfile.TemporaryDirectory(prefix="qaudit-conditions-") as tmp:
        path = Path(tmp) / "conditions.onnx"
        onnx.save(condition_model(model, conditions), str(path))
        session = make_session(path, optimize=False, what="the If conditions of the model")
        names = [o.name for o in session.get_outputs()]
        for feed in feeds:
            values = session.run(names, feed)
            runs += 1
            for k, v in enumerate(values):
                v = np.asarray(v)
                if v.size != 1:
                    raise ModelError(
                        f"the condition '{conditions[k]}' of an If node has {v.size} values (shape {list(v.shape)}); "
                        "an If condition must hold one boolean"
                    )
                seen[k][bool(v.reshape(-1)[0])] += 1
        del session
    return seen, runs


def _rename(graph: onnx.GraphProto, mapping: dict[str, str], own: bool = False) -> None:
    """Apply ``mapping`` to the names in ``graph``: with ``own``, the graph being inlined,
    whose own tensors are renamed too; otherwise a nested graph, whose outer-scope reads
    only are renamed (not the names it defines itself)."""
    if not own:
        local = {o for n in graph.node for o in n.output} | {t.name for t in graph.initializer}
        local |= {i.name for i in graph.input}
        mapping = {k: v for k, v in mapping.items() if k not in local}
        if not mapping:
            return
        for o in graph.output:
            o.name = mapping.get(o.name, o.name)
    for n in graph.node:
        for i, name in enumerate(n.input):
            n.input[i] = mapping.get(name, name)
        if own:
            for i, name in enumerate(n.output):
                n.output[i] = mapping.get(name, name)
        for g in subgraphs(n):
            _rename(g, mapping)
    if own:
        for t in list(graph.initializer) + list(graph.value_info):
            t.name = mapping.get(t.name, t.name)


def inline_if(graph: onnx.GraphProto, node: onnx.NodeProto, value: bool) -> int:
    """Replace the If ``node`` of ``graph`` by its ``then_branch`` (``value``) or ``else_branch``, in place.

    Returns the number of nodes the branch brought in.
    """
    branch = onnx.GraphProto()
    branch.CopyFrom(attr(node, "then_branch" if value else "else_branch"))
    taken = _names(graph, skip=node)
    defined = {o for n in branch.node for o in n.output if o} | {t.name for t in branch.initializer}
    mapping: dict[str, str] = {}
    pairs = [(o.name, y) for o, y in zip(branch.output, node.output) if y]
    for src, dst in pairs:  # the branch's outputs take the If's output names
        if src in defined and src not in mapping:
            mapping[src] = dst
    for name in sorted(defined - set(mapping)):  # names that would collide get a suffix
        if name in taken:
            mapping[name] = unique_name(name, taken)
        else:
            taken.add(name)
    # an output that is an outer value, or a branch tensor given twice, is copied by an Identity
    extra = [
        helper.make_node("Identity", [mapping.get(src, src)], [dst], name=f"{node.name}/{dst}")
        for src, dst in pairs
        if mapping.get(src) != dst
    ]
    _rename(branch, mapping, own=True)
    node_names = {n.name for n in graph.node if n is not node and n.name}
    for n in list(branch.node) + extra:
        if n.name and n.name in node_names:
            n.name = unique_name(f"{node.name}/{n.name}", node_names)
        elif n.name:
            node_names.add(n.name)
    at = next(i for i, n in enumerate(graph.node) if n is node)
    new_nodes = list(graph.node[:at]) + list(branch.node) + extra + list(graph.node[at + 1 :])
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(branch.initializer)
    graph.sparse_initializer.extend(branch.sparse_initializer)
    graph.value_info.extend(branch.value_info)
    return len(branch.node) + len(extra)


def every_sample(src, max_samples: int | None = None) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """The feeds of every calibration and evaluation sample of ``src`` (the audit's
    :class:`~qaudit.pipeline.data.Inputs`), one sample (or the model's fixed batch) per feed."""

    def feeds():
        yield from src.calib.batches(1, max_samples)
        if src.evaluation is not src.calib:
            yield from src.evaluation.batches(1, max_samples)

    return feeds


def prune_unused(graph: onnx.GraphProto, tensors: Iterable[str]) -> list[str]:
    """Remove, in place, the producers of ``tensors`` that nothing reads any more (what
    computed an inlined If's condition, or fed only the branch not taken), then their
    producers in turn, and the initializers among them. Returns the names of the nodes removed."""
    removed: list[str] = []
    todo = set(tensors)
    outputs = {o.name for o in graph.output}
    while todo:
        read = set().union(set(), *(_reads(n) for n in graph.node)) | outputs
        unused = {t.name for t in graph.initializer if t.name in todo and t.name not in read}
        if unused:
            inits = [t for t in graph.initializer if t.name not in unused]
            del graph.initializer[:]
            graph.initializer.extend(inits)
            ins = [i for i in graph.input if i.name not in unused]  # IR < 4 lists initializers as inputs
            del graph.input[:]
            graph.input.extend(ins)
        dead = [n for n in graph.node if todo.intersection(n.output) and not (set(n.output) - {""}) & read]
        todo = {name for n in dead for name in n.input}
        removed += [n.name for n in dead]
        if dead:
            keep = [n for n in graph.node if all(n is not d for d in dead)]
            del graph.node[:]
            graph.node.extend(keep)
    return removed


def resolve_control_flow(
    model: onnx.ModelProto,
    feeds: Callable[[], Iterable[dict[str, np.ndarray]]] | None,
    path: Path | str = "model",
) -> list[GraphChange]:
    """Inline every top-level If that holds layers and whose condition is constant over
    ``feeds()`` (every calibration and evaluation sample), in place; refuse the rest; then
    route what the remaining If/Loop/Scan subgraphs read from the main graph through an
    Identity (:func:`route_outer_reads`).

    Raises :class:`~qaudit.errors.ModelError` for an If whose condition changes over the
    data and for a Loop/Scan holding layers: ORT would leave their layers unquantized.
    """
    changes = _inline_constant_ifs(model, feeds, path)
    return changes + route_outer_reads(model)


def _outer_reads(graph: onnx.GraphProto) -> set[str]:
    """Every name the nodes of ``graph`` and of its nested subgraphs read (ONNX forbids a
    subgraph to shadow an outer name, so a main-graph tensor among them is an outer read)."""
    names: set[str] = set()
    for n in graph.node:
        names.update(n.input)
        for g in subgraphs(n):
            names |= _outer_reads(g)
    names |= {o.name for o in graph.output}
    return names


def route_outer_reads(model: onnx.ModelProto) -> list[GraphChange]:
    """Make the If/Loop/Scan subgraphs left in the main graph read main-graph tensors
    through an ``Identity`` node of the main graph, in place.

    ONNX Runtime's quantizer rewires only the main graph's consumers of a tensor it
    quantizes: a subgraph reading it by its outer-scope name keeps reading the float tensor
    before its QuantizeLinear, and when the QDQ quantizer removed a Relu after a Conv (the
    Conv then writes the Relu's output name) that is the Conv's output *without* the Relu
    (docs/ort-quirks.md #47; silero_vad.onnx: its decoder's squeeze switch read the
    encoder's output with 55 % negative values). An Identity is an ordinary main-graph
    consumer, which the quantizer rewires to the dequantized tensor.
    """
    graph = model.graph
    produced = {o: k for k, n in enumerate(graph.node) for o in n.output if o}
    taken = _names(graph)
    routed: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    changes = []
    for n in graph.node:
        graphs = subgraphs(n)
        if graphs:
            reads = sorted(set().union(*(_outer_reads(g) for g in graphs)) & set(produced))
            for x in reads:
                if x not in routed:
                    routed[x] = unique_name(f"{x}_outer", taken)
                    new_nodes.append(helper.make_node("Identity", [x], [routed[x]], name=unique_name(routed[x], taken)))
            for g in graphs:
                _rename(g, {x: routed[x] for x in reads})
            if reads:
                changes.append(
                    GraphChange(
                        "route_outer_reads",
                        n.name,
                        f"{n.op_type} node '{n.name}' reads {', '.join(repr(x) for x in reads[:3])}"
                        f"{', ...' if len(reads) > 3 else ''} inside its subgraphs: routed through an Identity in the "
                        "main graph, since ONNX Runtime's quantizer rewires only main-graph consumers and a "
                        "subgraph would read the tensor before its quantization (and without a Relu the "
                        "quantizer removed)",
                    )
                )
        new_nodes.append(n)
    if routed:
        del graph.node[:]
        graph.node.extend(new_nodes)
    return changes


def _inline_constant_ifs(model, feeds, path) -> list[GraphChange]:
    changes: list[GraphChange] = []
    for _ in range(MAX_DEPTH):
        graph = model.graph
        if not any(n.op_type in CONTROL_FLOW_OPS for n in graph.node):
            return changes
        ensure_node_names(model)  # messages and the report name every If
        held = [(n, layers_inside(n)) for n in graph.node if n.op_type in CONTROL_FLOW_OPS]
        held = [(n, found) for n, found in held if found]
        if not held:
            return changes
        for n, found in held:
            if n.op_type != "If":
                raise ModelError(
                    f"{n.op_type} node '{n.name}' holds layers in its body ({_describe(found)}): ONNX Runtime "
                    f"calibrates only the main graph, so they cannot be quantized; qaudit does not support "
                    f"layers inside a {n.op_type} (export the model with the loop unrolled)"
                )
        ifs = [n for n, _ in held]
        inits = initializers(graph)
        counts: list[Counter] = [Counter() for _ in ifs]
        data_conds = [k for k, n in enumerate(ifs) if n.input[0] not in inits]
        runs = 0
        if data_conds:
            if feeds is None:
                raise ModelError(f"If node '{ifs[data_conds[0]].name}' needs data to evaluate its condition")
            seen, runs = evaluate_conditions(model, [ifs[k].input[0] for k in data_conds], feeds())
            for k, c in zip(data_conds, seen):
                counts[k] = c
        for k, n in enumerate(ifs):
            cond = n.input[0]
            if cond in inits:
                v = numpy_helper.to_array(inits[cond]).reshape(-1)
                if v.size != 1:
                    raise ModelError(f"the condition '{cond}' of If node '{n.name}' has {v.size} values, not one")
                counts[k] = Counter({bool(v[0]): 1})
            if len(counts[k]) != 1:
                raise ModelError(
                    f"If node '{n.name}' holds layers in its branches ({_describe(layers_inside(n))}) and its "
                    f"condition '{cond}' changes over the data (true on {counts[k][True]}, false on "
                    f"{counts[k][False]} of {runs} samples): ONNX Runtime calibrates only the main graph; give "
                    "data for which the condition is constant, or audit each branch as a model of its own"
                )
        for k, first in enumerate(ifs):
            value = next(iter(counts[k]))
            branch = "then_branch" if value else "else_branch"
            cond = first.input[0]
            # the graph's nodes are copies after an earlier inlining: find the If by its outputs
            n = next(x for x in graph.node if x.op_type == "If" and list(x.output) == list(first.output))
            if cond in inits:
                why = f"its condition '{cond}' is a constant {str(value).lower()}"
            else:
                why = (
                    f"its condition '{cond}' was {str(value).lower()} on all {runs} calibration and evaluation samples"
                )
            reads = _reads(n)  # the condition, and what only the other branch read, may now be unused
            added = inline_if(graph, n, value)
            prune_unused(graph, reads)
            changes.append(
                GraphChange(
                    "inline_if",
                    n.name,
                    f"If node '{n.name}' replaced by its {branch} ({added} nodes), because {why} "
                    "(ONNX Runtime calibrates and quantizes only the main graph)",
                )
            )
    raise ModelError(f"{path} nests If nodes holding layers more than {MAX_DEPTH} deep; qaudit cannot inline them")
