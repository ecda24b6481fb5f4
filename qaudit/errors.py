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


class OutputError(QauditError):
    """An output file cannot be written (a full disk, a size limit); no output was left half-written.
    ``path``: the file being written, ``reason``: the system's words."""

    def __init__(self, message: str, path=None, reason: str | None = None):
        super().__init__(message)
        self.path, self.reason = path, reason


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so every temporary file and
    directory is removed on the way out; the CLI exits with 128 + ``signum``."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
