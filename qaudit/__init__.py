"""qaudit: audit the post-training quantization of ONNX models, layer by layer."""

__version__ = "0.1.0"

from .config import AuditConfig, QuantConfig  # noqa: E402
from .errors import QauditError  # noqa: E402
from .gate import GateConfig, Threshold, evaluate  # noqa: E402


def audit(cfg, progress=None):
    """Run an audit (see :func:`qaudit.control.audit`)."""
    from .control import audit as _audit

    return _audit(cfg, progress)


__all__ = ["AuditConfig", "GateConfig", "QuantConfig", "QauditError", "Threshold", "audit", "evaluate", "__version__"]
