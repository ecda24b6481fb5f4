"""ONNX Runtime sessions: how qaudit saves, loads and runs every graph it makes.

Sessions run with ONNX Runtime's default graph optimizations
(ORT_ENABLE_ALL) unless asked otherwise, so the quantized graph executes the
fused integer kernels a deployment would run.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx

#: Models whose initializers hold more than this are saved with external data:
#: their weights go to ``<name>.data`` once, and the in-memory proto keeps only
#: references to that file (docs/performance.md, "Big models").
EXTERNAL_DATA_BYTES = 32 * 1024 * 1024


def inline_bytes(model: onnx.ModelProto) -> int:
    """Bytes of tensor data held inside the proto's initializers (not in external files)."""
    return sum(len(t.raw_data) for t in model.graph.initializer if t.HasField("raw_data"))


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """Save ``model`` as ``path``.

    A model holding more than :data:`EXTERNAL_DATA_BYTES` of weights is saved
    with its weights in ``<name>.data`` beside it, once. ``model``'s
    initializers then refer to that file (relative to ``path``'s folder), but
    the memory they held is not freed (protobuf's arena keeps it until the
    whole message goes): replace the model by :func:`load_light` of the file,
    whose copies and variants (instrumented graphs) are then small; every ORT
    session reads the weights from the file. A model that already refers to
    external data is saved as it is: save it into the folder of its data
    (docs/performance.md, "Big models").
    """
    path = Path(path)
    if inline_bytes(model) > EXTERNAL_DATA_BYTES:
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
        )
    else:
        onnx.save_model(model, str(path))
    return path


#: What to try when ORT cannot load a model: the user's own model.
RUN_ON_CPU = "the model must run on onnxruntime's CPU provider"

#: What to try when ORT cannot load what its own quantizer wrote, although the fp32 model ran.
QUANTIZER_AT_FAULT = (
    "the fp32 model runs, so this is a fault of ONNX Runtime's quantizer (quantize_static wrote a model "
    "ONNX Runtime cannot load): try --exclude for the node named, the other --format, or no --per-channel, "
    "and please report it"
)


#: What to say when ORT cannot load the graph qaudit prepared (inlined, folded), although the user's model ran.
PREPARED_AT_FAULT = (
    "the model itself runs, so the graph qaudit prepared from it (Ifs inlined, BatchNorm folded) is at fault: "
    "please report this model to qaudit"
)


def load_light(path: Path) -> onnx.ModelProto:
    """The model saved at ``path``, its external data left in its file (see :func:`save_model`)."""
    return onnx.load(str(path), load_external_data=False)


def make_session(
    path: Path,
    optimize: bool = True,
    threads: int | None = None,
    what: str = "the model",
    advice: str = RUN_ON_CPU,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
):
    """An ORT session (CPU unless ``providers`` says otherwise, :mod:`qaudit.pipeline.runtimes`);
    ``optimize=False`` disables all graph optimizations.

    A model ORT cannot load (unknown op, unsupported type) raises
    :class:`~qaudit.errors.ModelError` naming ``what``, followed by ``advice``
    (:data:`QUANTIZER_AT_FAULT` for the models derived from the quantizer's output).
    """
    import onnxruntime as ort

    from qaudit.errors import ModelError

    so = ort.SessionOptions()
    quiet_logs(so)
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
        session = ort.InferenceSession(str(path), so, providers=list(providers))
        session.qaudit_what = what  # named by run_named when a run fails
        return session
    except Exception as e:
        raise ModelError(f"ONNX Runtime cannot run {what}: {ort_message(e)}; {advice}") from e


def no_spinning(so) -> None:
    """Make ORT's intra-op threads sleep, not spin, while they wait for work.

    By default (onnxruntime 1.32) the pool's threads busy-wait after each
    kernel, which keeps every core busy for as long as a run lasts; qaudit
    overlaps inference with numpy work on another thread, and the spinning
    threads took that core: PP-OCRv4 det@320, 32 samples, capture ORT time 4.0 s
    with spinning, 1.8 s without (docs/ort-quirks.md).
    """
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")


#: ORT's logger severity qaudit uses: 4 = fatal only. ORT writes its log lines to stderr itself,
#: in colour (``\x1b[1;31m...``), before qaudit could print its own one-line error; every
#: error ORT logs also reaches qaudit as an exception, which qaudit reports (docs/ort-quirks.md).
ORT_LOG_SEVERITY = 4


def quiet_logs(so) -> None:
    """ORT's default logger and the session of ``so`` (SessionOptions) print nothing below fatal."""
    import onnxruntime as ort

    ort.set_default_logger_severity(ORT_LOG_SEVERITY)
    so.log_severity_level = ORT_LOG_SEVERITY


#: terminal escape sequences (colours) and other control characters in ORT's messages
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def ort_message(e: Exception) -> str:
    """ORT's exception text without its error-code prefix, temporary paths and escape codes."""
    text = _ESCAPES.sub("", str(e)).strip()
    msg = text.splitlines()[0] if text else type(e).__name__
    msg = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", msg)
    return re.sub(r"Load model from \S+ failed:\s*", "", msg)


def run_named(session, feeds: dict) -> dict[str, np.ndarray]:
    """Every output of ``session`` on ``feeds``, by name. A run ORT refuses (an op that cannot
    run the shapes it gets) is a :class:`~qaudit.errors.ModelError` naming the session's model."""
    names = [o.name for o in session.get_outputs()]
    try:
        return dict(zip(names, session.run(names, feeds)))
    except Exception as e:
        if not type(e).__module__.startswith("onnxruntime"):
            raise
        from qaudit.errors import ModelError

        what = getattr(session, "qaudit_what", "the model")
        raise ModelError(f"ONNX Runtime cannot run {what} on the data: {ort_message(e)}") from e
