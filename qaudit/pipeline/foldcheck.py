"""The BatchNorm-folding check: the folded fp32 model must reproduce the original's outputs."""

from __future__ import annotations

import numpy as np


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
