"""Threads and memory: run sessions and measuring functions side by side, bounded in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from qaudit.pipeline.data import samples

#: batches between two :func:`release_free_memory` calls (see there for why 32)
TRIM_EVERY = 32

#: Bytes that the buffers the sessions hold for one batch (:func:`buffer_bytes_per_sample`)
#: may take together when the batch size is automatic. Peak memory is this plus
#: the model, the meters and the interpreter, whatever N is: a 1-D conv net with
#: 0.3 MB of weights and 106 MB of activations per sample peaks at 0.8 GB with
#: its automatic batch of 1 (benchmarks/bench_scale.py; docs/performance.md).
ACTIVATION_BUDGET = 384 * 1024 * 1024
MAX_AUTO_BATCH = 64
#: bytes of an integer twin per byte of float activation (8-bit codes of float32 values)
INT_PER_FLOAT = 0.25
#: batches whose buffers are alive at once: one measured while the session runs the next (:func:`lockstep`)
BATCHES_ALIVE = 2


def buffer_bytes_per_sample(float_bytes: int, isolated: bool = True, runtimes: int = 1) -> int:
    """Bytes of session buffers one sample costs at the audit's peak, from its float activations.

    * calibration: the augmented session exposes every float activation
      (``float_bytes``) and ORT's calibrator gets them one batch at a time (qaudit
      hands it each batch's outputs; nothing is collected across batches);
    * capture: the fp32 instrumented session exposes the twins (at most every float
      activation), the quantized session their integer codes (a quarter of that),
      and the isolated-error session the same again;
    * both keep :data:`BATCHES_ALIVE` batches; no session has an ORT memory arena
      (``session.make_session``), so ORT keeps nothing between runs.

    * each further runtime (``--runtimes``) exposes the integer codes once more.

    The larger of the two stages, the capture's ``2 * 1.5 * float_bytes`` with the
    isolated pass, is what counts.
    """
    calibration = float_bytes
    capture = float_bytes * (1 + INT_PER_FLOAT * ((2 if isolated else 1) + max(0, runtimes - 1)))
    return int(BATCHES_ALIVE * max(calibration, capture))


def auto_batch_size(bytes_per_sample: int, fixed: int | None, isolated: bool = True, runtimes: int = 1) -> int:
    """The largest batch (1..64) whose session buffers fit ACTIVATION_BUDGET; a fixed batch dim wins.

    ``bytes_per_sample``: float activations of one sample (see :func:`buffer_bytes_per_sample`).
    """
    if fixed:
        return fixed
    per_sample = max(1, buffer_bytes_per_sample(bytes_per_sample, isolated, runtimes))
    return int(max(1, min(MAX_AUTO_BATCH, ACTIVATION_BUDGET // per_sample)))


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


def lockstep(
    run: Callable[[dict[str, np.ndarray]], tuple],
    batches: Iterable[dict[str, np.ndarray]],
    measure: Callable[[dict[str, np.ndarray], tuple], None] | Sequence[Callable[[dict[str, np.ndarray], tuple], None]],
    overlap: bool = True,
    size: Callable[[dict[str, np.ndarray]], int] = samples,
) -> int:
    """``run`` the sessions on each batch and hand their outputs to ``measure``.

    ``measure`` may be several functions (each measuring its own share of the
    tensors); with ``overlap`` each runs on its own worker thread while ``run``
    computes the next batch: ONNX Runtime and most numpy loops release the GIL,
    so inference and measuring share the cores. At most two batches are alive at
    once, and each function sees the batches one at a time and in order, so the
    results are the same as without overlap. Returns the number of samples
    (``size(item)`` summed: the items of ``batches`` need not be feeds).
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
            seen += size(feeds)
        for f in pending:
            f.result()
    finally:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
    return seen
