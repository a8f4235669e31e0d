"""One budget, independent items: the arrays that the single-budget solvers work on.

Ties are collapsed with :func:`~mpsearch.solvers.base.reduce`. Without ties no
array is copied: the ``avg_bits`` and ``bytes`` budgets use ``storage_bits``
directly with the limit scaled to bits, so no items x choices temporary is made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import ConfigError
from mpsearch.solvers.base import RTOL, reduce


@dataclass(frozen=True, eq=False)
class Problem:
    """``cost``, ``resource`` (items x choices), ``allowed`` (or None: all allowed), ``limit``."""

    cost: np.ndarray
    resource: np.ndarray
    allowed: np.ndarray | None
    limit: float
    members: tuple[tuple[int, ...], ...] | None  # None when items were not merged
    n_items: int

    def expand(self, choice: np.ndarray) -> np.ndarray:
        if self.members is None:
            return choice.astype(np.int64, copy=False)
        out = np.empty(self.n_items, np.int64)
        for r, group in enumerate(self.members):
            out[list(group)] = choice[r]
        return out


def single_budget(costs: CostTable, budgets: tuple[Budget, ...], solver: str) -> Problem:
    """The problem of one budget; several budgets raise :class:`ConfigError` naming the fix."""
    if len(budgets) != 1:
        raise ConfigError(
            f"solver {solver!r} must get exactly one budget, but got {len(budgets)} "
            f"({', '.join(b.describe() for b in budgets)}). Use solver='ilp', 'greedy' or 'tpe' for several."
        )
    budget = budgets[0]
    limit = budget.value * (1 + RTOL)
    if costs.ties:
        red = reduce(costs, budgets)
        if budget.kind not in ("avg_bits", "bytes"):
            return Problem(red.cost, red.matrices[0], red.allowed, limit, red.members, costs.n_items)
        # sum storage bits per merged item, so integer storage stays integer (exact DP grid)
        storage = np.where(costs.allowed, costs.storage_bits, 0.0)
        merged = np.stack([storage[list(g)].sum(axis=0) for g in red.members])
        scale = float(costs.n_weights.sum()) if budget.kind == "avg_bits" else 8.0
        return Problem(red.cost, merged, red.allowed, limit * scale, red.members, costs.n_items)
    allowed = None if bool(costs.allowed.all()) else costs.allowed
    if budget.kind == "avg_bits":
        return Problem(costs.cost, costs.storage_bits, allowed, limit * float(costs.n_weights.sum()), None, costs.n_items)
    if budget.kind == "bytes":
        return Problem(costs.cost, costs.storage_bits, allowed, limit * 8.0, None, costs.n_items)
    return Problem(costs.cost, budget.matrix(costs), allowed, limit, None, costs.n_items)
