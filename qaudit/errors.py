"""One exception family for everything qaudit reports to a user.

``QauditError`` and its subclasses are *user* errors: bad input, bad
configuration, a model qaudit or ONNX Runtime cannot handle. The CLI prints
them as one line and exits with code 2. Anything else that escapes is a bug in
qaudit and exits with code 3, so a crash is never mistaken for a verdict.
"""

from __future__ import annotations


class QauditError(Exception):
    """A problem with the user's input; the message says what and how to fix it."""

    exit_code = 2


class ModelError(QauditError):
    """The model file is missing, corrupt, invalid or unsupported."""


class DataError(QauditError):
    """Calibration/evaluation data or labels are missing or do not fit the model."""


class ConfigError(QauditError):
    """An option or configuration value is invalid."""


class QuantizationError(QauditError):
    """ONNX Runtime could not calibrate or quantize the model."""


class FoldingError(QauditError):
    """BatchNormalization folding changed what the model computes."""
