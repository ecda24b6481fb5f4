"""Stage 4b: expose intermediate tensors and run fp32 and quantized graphs in lockstep.

Sessions run with ONNX Runtime's default graph optimizations
(ORT_ENABLE_ALL), so the quantized graph executes the fused integer kernels a
deployment would run (see :mod:`qaudit.match` for why hooking integer tensors
keeps those fusions). Only one batch of intermediate tensors is alive at a
time.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import onnx

#: Models above this size are saved with external data (protobuf's 2 GiB limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Save ``model``; large ones get their weights in ``<name>.data`` beside it."""
    path = Path(path)
    if model.ByteSize() > _EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path), save_as_external_data=True, location=path.name + ".data")
    else:
        onnx.save_model(model, str(path))
    return path


def with_outputs(model: onnx.ModelProto, names: Iterable[tuple[str, int]]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``names`` (``(tensor, elem_type)`` pairs)."""
    m = copy.deepcopy(model)
    have = {o.name for o in m.graph.output}
    for name, elem_type in names:
        if name not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, None))
            have.add(name)
    return m


def make_session(path: Path, optimize: bool = True, threads: int | None = None, what: str = "the model"):
    """An ORT CPU session; ``optimize=False`` disables all graph optimizations.

    A model ORT cannot load (unknown op, unsupported type) raises
    :class:`~qaudit.errors.ModelError` naming ``what``.
    """
    import onnxruntime as ort

    from .errors import ModelError

    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ORT warns on every unused initializer
    # No memory arena: an arena keeps the largest batch's buffers for the session's
    # life, and qaudit runs several sessions one after another (seen on 1.32: det@320
    # peak RSS 1.84 GB with arenas, 1.35 GB without).
    so.enable_cpu_mem_arena = False
    no_spinning(so)
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(
            f"ONNX Runtime cannot run {what}: {ort_message(e)}; the model must run on onnxruntime's CPU provider"
        ) from e


def no_spinning(so) -> None:
    """Make ORT's intra-op threads sleep, not spin, while they wait for work.

    By default (onnxruntime 1.32) the pool's threads busy-wait after each
    kernel, which keeps every core busy for as long as a run lasts; qaudit
    overlaps inference with numpy work on another thread, and the spinning
    threads took that core: PP-OCRv4 det@320, 32 samples, capture ORT time 4.0 s
    with spinning, 1.8 s without (docs/ort-quirks.md).
    """
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")


#: batches between two :func:`release_free_memory` calls (see there for why 32)
TRIM_EVERY = 32


def release_free_memory() -> None:
    """Return the C heap's free pages to the operating system (glibc ``malloc_trim``; elsewhere nothing).

    glibc serves arrays below its *dynamic* mmap threshold (it rises to the size
    of the largest freed block, up to 32 MiB) from per-thread arenas; with ORT and
    two measuring threads allocating and freeing activation-sized arrays, freed
    pages stay resident and RSS creeps up with the number of batches. A trim is
    not free either: the next batch faults every returned page back in.
    PP-OCRv4 det@320, batch 1, peak RSS at 128 -> 512 samples and wall time at
    512 (onnxruntime 1.32, glibc 2.36, 2 cores):

    =================  =========================  ===========  ===========
    trim               peak RSS, 128 -> 512       wall at 512  page faults
    =================  =========================  ===========  ===========
    never              843 -> 1,032 MB (+22 %)    (not kept)   0.5 M
    every 8 batches    830 -> 858 MB (+3.4 %)     76.7 s       8.3 M
    every 32 batches   827 -> 874 MB (+5.6 %)     70.8 s       2.4 M
    every 64 batches   838 -> 905 MB (+8.0 %)     68.1 s       1.4 M
    =================  =========================  ===========  ===========

    Every 32 keeps the growth near 5 % (the target is 10 %). Trimming when RSS
    passed the first batches' high by 5 % trimmed every other batch: the
    capture's working set keeps growing for a while (the meters hold small
    tensors back, ``measure.PENDING_BYTES``). MALLOC_ARENA_MAX=2 did not stop
    the creep (865 -> 997 MB).
    """
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        try:
            import ctypes
            import ctypes.util

            name = ctypes.util.find_library("c")
            libc = ctypes.CDLL(name) if name else None
            _malloc_trim = getattr(libc, "malloc_trim", False) if libc is not None else False
        except OSError:
            pass
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def usable_cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def shares(sizes: dict[str, int], n: int) -> list[list[str]]:
    """Split tensors into ``n`` lists of about equal total size (largest first, each to the lightest list)."""
    out: list[list[str]] = [[] for _ in range(max(1, n))]
    load = [0] * len(out)
    for name in sorted(sizes, key=lambda k: (-sizes[k], k)):
        i = load.index(min(load))
        out[i].append(name)
        load[i] += sizes[name]
    return [s for s in out if s]


def ort_message(e: Exception) -> str:
    """ORT's exception text without its error-code prefix and temporary paths."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    return re.sub(r"Load model from \S+ failed:\s*", "", msg)


def run_named(session, feeds: dict) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def lockstep(
    run: Callable[[dict[str, np.ndarray]], tuple],
    batches: Iterable[dict[str, np.ndarray]],
    measure: Callable[[dict[str, np.ndarray], tuple], None] | Sequence[Callable[[dict[str, np.ndarray], tuple], None]],
    overlap: bool = True,
) -> int:
    """``run`` the sessions on each batch and hand their outputs to ``measure``.

    ``measure`` may be several functions (each measuring its own share of the
    tensors); with ``overlap`` each runs on its own worker thread while ``run``
    computes the next batch: ONNX Runtime and most numpy loops release the GIL,
    so inference and measuring share the cores. At most two batches are alive at
    once, and each function sees the batches one at a time and in order, so the
    results are the same as without overlap. Returns the number of samples.
    """
    from concurrent.futures import ThreadPoolExecutor

    measures = [measure] if callable(measure) else list(measure)
    pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"qaudit-measure-{i}") for i in range(len(measures))]
    seen = batch_no = 0
    try:
        pending: list = []
        for feeds in batches:
            outs = run(feeds)
            for f in pending:
                f.result()  # re-raises a measuring error; bounds memory to two batches
            pending = []
            batch_no += 1
            if batch_no % TRIM_EVERY == 0:
                release_free_memory()  # the workers are idle now
            if overlap:
                pending = [pool.submit(m, feeds, outs) for pool, m in zip(pools, measures)]
            else:
                for m in measures:
                    m(feeds, outs)
            seen += next(iter(feeds.values())).shape[0]
        for f in pending:
            f.result()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    return seen


class OutputDeviation:
    """Largest ``max|a - b|`` and ``max|a|`` per graph output over all batches it is given."""

    def __init__(self):
        self.worst: dict[str, list[float]] = {}

    def update(self, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
        for k, va in a.items():
            vb = b[k]
            va64, vb64 = np.asarray(va, np.float64), np.asarray(vb, np.float64)
            diff = float(np.max(np.abs(va64 - vb64))) if va.size else 0.0
            scale = float(np.max(np.abs(va64))) if va.size else 0.0
            w = self.worst.setdefault(k, [0.0, 0.0])
            w[0] = max(w[0], diff)
            w[1] = max(w[1], scale)

    def result(self) -> dict[str, tuple[float, float]]:
        return {k: (d, s) for k, (d, s) in self.worst.items()}


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
        new_nodes.append(helper.make_node("QuantizeLinear", [inp, scale.name, zp.name], [q_out], name=f"{tw.quant_name}::isolate", **kw))
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
