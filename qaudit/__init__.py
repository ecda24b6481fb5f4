"""qaudit: audit the post-training quantization of ONNX models, layer by layer.

The public API (docs/api.md)::

    report = qaudit.audit("model.onnx", calib="calib/", eval="eval/", labels="labels.npy", per_channel=True)
    result = qaudit.evaluate(report, qaudit.GateConfig({"min_layer_sqnr": 25}))
    qaudit.render(report, "html", gates=result, to="report.html")
    saved = qaudit.load_report("report.json")
    comparison = qaudit.compare("a.onnx", "b.onnx", calib="calib/")

Importing qaudit imports neither onnx nor onnxruntime: :func:`load_report`,
:func:`evaluate` and :func:`render` of saved reports run without them.
"""

__version__ = "0.1.0"

from qaudit.errors import QauditError
from qaudit.gate import GateConfig, Threshold, evaluate
from qaudit.options import AuditConfig, QuantConfig
from qaudit.report import GateResult, Report, load_report
from qaudit.runs import MultiReport


def audit(
    model, calib=None, eval=None, labels=None, *, progress=None, trial_executor=None, **options
) -> Report | MultiReport:
    """Audit the post-training quantization of ``model``.

    ``model``: an ONNX file, or a whole :class:`AuditConfig` (then no other
    argument but ``progress``). ``calib`` / ``eval``: a directory or file of
    ``.npy``/``.npz`` batches or ONNX test-data folders, an ONNX Runtime
    ``CalibrationDataReader`` with ``rewind()``, a callable returning a fresh
    iterator of feed dicts, or arrays (one array, ``{input name: array}``, or a
    list of feed dicts); streamed, never copied whole. A path may also be a folder
    of images (class subfolders give labels) or WAV files, read with
    ``preprocess="imagenet"`` (a preset and keys, docs/data.md), or a loader script
    ``"loader.py:NAME"``. Without ``eval`` the
    calibration data is measured (the report says so). ``labels``: a ``.npy``
    file or an integer array, one class per evaluation sample. ``options``: any
    field of :class:`AuditConfig` or :class:`QuantConfig`
    (``weight_type="int8"``, ``per_channel=True``, ``batch_size=16``, ...).
    ``progress``: an object with ``stage(description, total)`` and
    ``advance(n)``, owned by the caller. Several calibration methods
    (``calibrate_method=["percentile", "entropy"]`` or ``"percentile,entropy"``)
    calibrate once and audit one run per method: a :class:`MultiReport`.
    ``trials=N`` (``seed``, ``trial_fraction``) adds the calibration trials' statistics
    (``report.trials``); ``trial_executor`` runs them (default: here, sharing one fp32
    pass; :class:`qaudit.pipeline.trials.MapExecutor` hands each trial to a ``map``).

    Raises :class:`QauditError` subclasses for bad input (a one-line message).
    """
    from qaudit.options import audit_config
    from qaudit.pipeline.audit import audit as run

    if isinstance(model, AuditConfig):
        if calib is not None or eval is not None or labels is not None or options:
            raise TypeError("audit(config) takes no other arguments than progress and trial_executor")
        return run(model, progress, trial_executor=trial_executor)
    if calib is None and options.get("quantized") is None:
        raise TypeError("audit() needs calib: audit(model, calib, eval=None, labels=None, **options)")
    return run(audit_config(model, calib, eval, labels, **options), progress, trial_executor=trial_executor)


def compare(*inputs, calib=None, eval=None, labels=None, names=None, progress=None, **options):
    """Align and compare exports of one network (models or saved JSON reports).

    ``inputs``: two or more ONNX files or ``.json`` reports, or one
    :class:`~qaudit.comparison.run.CompareConfig`. Models are audited with the
    same data (``calib``, ``eval``, ``labels`` as in :func:`audit`) and the same
    ``options``; besides the audit options, ``pins``, ``activations`` and
    ``tolerances`` of ``CompareConfig`` are accepted. ``names``: a label per
    input (default: from the file names). Returns a
    :class:`~qaudit.comparison.result.Comparison`, which :func:`render` renders.
    """
    from qaudit.comparison.run import CompareConfig
    from qaudit.comparison.run import compare as run
    from qaudit.options import audit_config

    if len(inputs) == 1 and isinstance(inputs[0], CompareConfig):
        return run(inputs[0], progress)
    extra = {k: options.pop(k) for k in ("pins", "activations", "tolerances") if k in options}
    template = None
    if calib is not None:
        template = audit_config(inputs[0] if inputs else "", calib, eval, labels, **options)
    elif options or eval is not None or labels is not None:
        raise QauditError("compare: audit options and eval/labels need calib data (the models are audited)")
    cfg = CompareConfig(inputs=tuple(inputs), audit=template, labels=tuple(names) if names else None, **extra)
    return run(cfg, progress)


def render(subject, fmt: str, *, gates=None, to=None, **options) -> str:
    """Render a :class:`Report` or a comparison as ``fmt`` ("terminal", "json",
    "markdown", "junit", "html"); with ``to`` (a path, or "-" for stdout) also
    write it, atomically. See :func:`qaudit.renderers.render`."""
    from qaudit.renderers import render as run

    return run(subject, fmt, gates=gates, to=to, **options)


__all__ = [
    "AuditConfig",
    "GateCheck",
    "GateConfig",
    "GateResult",
    "LayerRow",
    "MultiReport",
    "OutputRow",
    "UnmatchedTensor",
    "QauditError",
    "QuantConfig",
    "Report",
    "Threshold",
    "__version__",
    "audit",
    "compare",
    "evaluate",
    "load_report",
    "render",
]
