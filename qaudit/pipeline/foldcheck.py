"""The BatchNorm-folding check: the folded fp32 model must reproduce the original's outputs."""

from __future__ import annotations

import numpy as np

from qaudit.errors import FoldingError
from qaudit.pipeline.data import samples
from qaudit.pipeline.session import run_named

#: calibration samples on which the BN-folded model is compared with the original
FOLD_CHECK_SAMPLES = 64


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


class FoldingCheck:
    """The folded fp32 model must reproduce the original's outputs (and, when qaudit
    inlined an If or upgraded the opset, the user's model's outputs: ``what`` names the rewrite).

    Observes the calibration pass (which runs the folded model) and runs the
    original model on the same batches, up to :data:`FOLD_CHECK_SAMPLES`
    samples: folding is an exact rewrite of the weights, so a wrong fold shows
    on the first batches, and checking every sample would cost one more
    (unoptimized) fp32 inference per sample, about 1.4x plain fp32 inference
    on PP-OCR det. The report says how many samples were checked.
    """

    def __init__(
        self,
        session,
        output_names,
        max_samples: int,
        what: str = "BatchNormalization folding",
        advice: str = "please report this model to qaudit",
    ):
        self.what, self.advice = what, advice  # what rewrote the graph; what the error suggests
        self.session = session
        self.names = list(output_names)
        self.dev = OutputDeviation()
        self.max_samples = max_samples
        self.samples = 0

    def observe(self, feeds, outputs) -> None:
        if self.samples >= self.max_samples:
            return
        ref = run_named(self.session, feeds)
        self.dev.update({k: ref[k] for k in self.names}, {k: outputs[k] for k in self.names})
        self.samples += samples(feeds)

    def result(self, rtol: float, atol: float) -> dict:
        """``{output: {max_abs_diff, max_abs}}``; raises :class:`~qaudit.errors.FoldingError`
        when an output moved by more than ``atol + rtol * max|output|``. Releases the session."""
        self.session = None
        check = {}
        for out, (diff, scale) in self.dev.result().items():
            check[out] = {"max_abs_diff": diff, "max_abs": scale}
            if diff > atol + rtol * scale:
                raise FoldingError(
                    f"{self.what} changed output '{out}' by {diff:.3g} (max |output| {scale:.3g}, "
                    f"tolerance {atol:g} + {rtol:g}*max); {self.advice}"
                )
        return check
