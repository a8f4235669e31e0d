"""What discovery tells the user: the modules that stay in floating point, with the reasons.

Written once for a search space (:meth:`mpsearch.space.discover.SearchSpace.float_notice`) and for a
cost table that only kept the list (``mpsearch search`` has no model).
"""

from __future__ import annotations

from collections.abc import Sequence

from mpsearch.space.units import FloatModule


def float_modules_notice(model_name: str, modules: Sequence[FloatModule], n_searched: int, limit: int = 5) -> str:
    n = sum(m.n_weights for m in modules)
    shown = "; ".join(m.describe() for m in modules[:limit])
    more = f"; and {len(modules) - limit} more" if len(modules) > limit else ""
    return (f"{len(modules)} module(s) of {model_name} cannot be quantized and stay in floating point "
            f"({n:,} weights, {100 * n / (n + n_searched):.0f} % of the weight matrices): {shown}{more}. "
            "Plans leave them untouched; bit budgets cover only the searched units.")


def float_notice_of(costs) -> str | None:
    """The float-modules sentence from a :class:`~mpsearch.core.costs.CostTable` (``mpsearch search`` has no model)."""
    try:
        modules = [FloatModule(**r) for r in costs.meta.get("float_modules") or []]
    except TypeError:  # a hand-edited table: nothing reliable to say
        return None
    name = str(costs.meta.get("model", "the model"))
    return float_modules_notice(name, modules, int(costs.n_weights.sum())) if modules else None


__all__ = ["float_modules_notice", "float_notice_of"]
