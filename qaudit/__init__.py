"""qaudit: audit the post-training quantization of ONNX models, layer by layer."""

__version__ = "0.1.0"

from qaudit.errors import QauditError
from qaudit.gate import GateConfig, Threshold, evaluate
from qaudit.options import AuditConfig, QuantConfig


def audit(cfg, progress=None):
    """Run an audit (see :func:`qaudit.pipeline.audit.audit`)."""
    from qaudit.pipeline.audit import audit as _audit

    return _audit(cfg, progress)


__all__ = ["AuditConfig", "GateConfig", "QuantConfig", "QauditError", "Threshold", "audit", "evaluate", "__version__"]
