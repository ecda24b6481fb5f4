"""The per-value loops of calibration and measurement: compiled, or numpy.

``qaudit/_kernels.c`` is built by ``pip install`` when a C compiler is there
(``setup.py``: an optional extension). It does in one pass, without holding
the GIL, what numpy does in 5 to 8 passes (temporaries for ``|x|``, bin
indices, errors, squares) while holding it in ``np.bincount``. The statistics
are the same either way: histograms and counts identical, sums of squares
equal to ~1e-7 relative (double in C, numpy's float32 pairwise sums);
``tests/pipeline/test_kernels.py`` holds the two side by side.

``QAUDIT_KERNELS=numpy`` makes qaudit use numpy although the kernels are
built; ``QAUDIT_KERNELS=c`` makes it fail when they are not (CI, benchmarks).
"""

from __future__ import annotations

import os

from qaudit.errors import ConfigError

try:
    from qaudit.pipeline import _kernels as _compiled
except ImportError:  # not built: no compiler at install time
    _compiled = None

ENV = "QAUDIT_KERNELS"


def native():
    """The compiled kernels module, or ``None`` when qaudit should use numpy."""
    choice = os.environ.get(ENV, "").strip().lower()
    if choice in ("", "auto"):
        return _compiled
    if choice == "numpy":
        return None
    if choice == "c":
        if _compiled is None:
            raise ConfigError(
                f"{ENV}=c but qaudit's C kernels are not built: reinstall qaudit where a C compiler is available "
                f"(pip install --force-reinstall --no-deps .), or unset {ENV}"
            )
        return _compiled
    raise ConfigError(f"{ENV} must be c, numpy or auto, not {os.environ[ENV]!r}")


def name() -> str:
    """``"c"`` or ``"numpy"``: which loops this run uses (recorded in the report)."""
    return "c" if native() is not None else "numpy"
