"""How far a sampled sensitivity estimate can be trusted, and a loud warning when it cannot.

A sampled estimator (the Hutchinson trace) stops at its tolerance, its probe cap or its time
limit. Stopped early, some units' estimates may be little better than noise, and a plan solved
from them can be worse than uniform quantization (ResNet-44, 8 probes under a time limit: a
3-bit plan 15.6 points below uniform, median relative standard error 1.06 over the searched
units, the worst 33). :func:`estimate_quality` condenses the estimate's own error figures into a
small record that cost tables and plans carry in their ``meta["estimate_quality"]``;
:func:`noisy_message` says what is wrong and what to do when the median relative standard error
over the searched units is above :data:`NOISY_REL_STDERR`, i.e. when most units' 95 % intervals
reach zero. The median, not the worst unit, decides: a nearly flat unit has a large relative error
however long the estimate runs (ResNet-20 after 32 probes: median 0.28, worst 1.24), and its tiny
cost does not move a plan.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from mpsearch.core.errors import NoisyEstimateWarning

#: Above this relative standard error a unit's 95 % interval (two standard errors) reaches zero:
#: the estimate cannot tell a sensitive unit from an insensitive one. Compared with the median.
NOISY_REL_STDERR = 0.5


def _short(value: float) -> float:
    return float(f"{value:.4g}")


def estimate_quality(method: str, details: Mapping[str, Any], settings: Mapping[str, Any],
                     searched: Sequence[str]) -> dict[str, Any] | None:
    """``{"estimator", "converged", "probes", "tol", "rel_stderr_max", "rel_stderr_median",
    "worst_unit"}`` of an estimate that reports per-unit means and standard errors (``details``
    with ``trace``, ``trace_stderr`` and ``converged``), over the ``searched`` units (pinned units
    never change a plan); None for estimators without sampling error."""
    trace, stderr = details.get("trace"), details.get("trace_stderr")
    if not isinstance(trace, Mapping) or not isinstance(stderr, Mapping) or "converged" not in details:
        return None
    names = [n for n in searched if n in trace and n in stderr] or [n for n in trace if n in stderr]
    if not names:
        return None
    rel = {n: float(stderr[n]) / max(abs(float(trace[n])), 1e-30) for n in names}
    worst = max(rel, key=rel.__getitem__)
    ordered = sorted(rel.values())
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    tol = settings.get("tol")
    return {
        "estimator": str(method), "converged": bool(details["converged"]), "probes": int(details.get("probes", 0)),
        "tol": float(tol) if isinstance(tol, (int, float)) else None,
        "rel_stderr_max": _short(rel[worst]), "rel_stderr_median": _short(median), "worst_unit": worst,
    }


def noisy_message(quality: Mapping[str, Any] | None) -> str | None:
    """The warning for an estimate too noisy to trust, or None (no record, converged, or precise enough)."""
    if not isinstance(quality, Mapping) or quality.get("converged", True):
        return None
    median = quality.get("rel_stderr_median")
    if not isinstance(median, (int, float)) or not math.isfinite(median) or median <= NOISY_REL_STDERR:
        return None
    return (
        f"a sensitivity estimate must be precise enough to rank units (median relative standard error over the "
        f"searched units at most {NOISY_REL_STDERR:g}), but the {quality.get('estimator')} estimate stopped after "
        f"{quality.get('probes')} probes (converged=False, tol={quality.get('tol')}) with a median relative standard "
        f"error of {median:.3g} (worst {quality.get('rel_stderr_max', float('nan')):.3g} on {quality.get('worst_unit')!r}): "
        "its costs, and plans solved from them, are close to guesses. Give it more probes or time "
        "(--max-probes/--time-limit, max_probes=/time_limit=), or use an estimator without sampling noise "
        "(--estimator first_order, or fisher)."
    )


def warn_if_noisy(quality: Mapping[str, Any] | None, *, stacklevel: int = 3) -> None:
    """Issue :class:`NoisyEstimateWarning` when :func:`noisy_message` has something to say."""
    message = noisy_message(quality)
    if message is not None:
        warnings.warn(message, NoisyEstimateWarning, stacklevel=stacklevel)


__all__ = ["NOISY_REL_STDERR", "estimate_quality", "noisy_message", "warn_if_noisy"]
