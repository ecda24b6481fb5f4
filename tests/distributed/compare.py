"""Compare two reports as issue 21 promises: exact, except the float64 sums within SUM_RTOL."""

from __future__ import annotations

import math

from qaudit.distributed import SUM_RTOL

#: the report's values computed from float64 sums whose order a sharded run changes (a cause's
#: ``severity`` is a threshold minus one of them; an evidence's ``value`` is its ``metric``'s)
SUMMED = ("sqnr", "qmse", "qce", "qkl", "rel_error", "error_amplification", "clip_error_share", "severity")
#: what may differ between two runs of one audit (the clock) or names how it ran
UNCOMPARED = {("meta", "created"), ("meta", "seconds"), ("meta", "phase_seconds"), ("meta", "ray")}


def differences(a, b, path=()) -> list[str]:
    """Where ``b`` differs from ``a`` (two ``to_dict`` reports), beyond the promise."""
    if path[:2] in UNCOMPARED:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        keys_a = {k for k in a if (*path, k)[:2] not in UNCOMPARED}
        keys_b = {k for k in b if (*path, k)[:2] not in UNCOMPARED}
        out = [f"{'.'.join(map(str, path))}: keys {sorted(keys_a ^ keys_b)}"] if keys_a != keys_b else []
        for k in a:
            if k in b:  # {"metric": "sqnr_db", "value": ...}: the value named by its metric
                named = (*path, a["metric"]) if k == "value" and isinstance(a.get("metric"), str) else (*path, k)
                out += differences(a[k], b[k], named)
        return out
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return [f"{'.'.join(map(str, path))}: {len(a)} items vs {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, (*path, i))]
    summed = any(s in str(k) for k in path[-1:] for s in SUMMED)
    if summed and isinstance(a, float) and isinstance(b, float) and math.isfinite(a):
        ok = math.isclose(a, b, rel_tol=SUM_RTOL, abs_tol=1e-300)
    else:
        ok = a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return [] if ok else [f"{'.'.join(map(str, path))}: {a!r} vs {b!r}"]
