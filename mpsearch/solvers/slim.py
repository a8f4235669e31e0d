"""SliM-LLM's per-layer rule: every unit keeps the average width on its own; its groups trade bits by cost.

SliM-LLM (Huang et al., "Salience-driven mixed-precision quantization for LLMs") gives each
layer a target width b and lets its groups move one width up or down, b - 1 or b + 1, by
salience, with the layer's mean width fixed. Here that rule is a solver of a group-granularity
:class:`~mpsearch.core.costs.CostTable`: with the table's choices limited to the window
(e.g. bits 2, 3, 4 for b = 3) and an ``avg_bits`` budget B, each unit u gets

    minimize sum_g cost[g, x_g]   subject to   sum_g storage[g, x_g] <= B * n_weights(u),

solved unit by unit, so a score scale that differs between units cannot move bits from one unit
to another. Each unit's problem is a multiple-choice knapsack, solved by the greedy on each
group's lower convex hull of (storage, cost), taking steps in decreasing cost saved per stored
bit. That greedy solves the knapsack's LP relaxation exactly (Sinha and Zoltners, 1979), and
the LP optimum is fractional in at most one step; when no step is fractional the plan is the LP
optimum and hence optimal. Otherwise the steps that still fit are added in the same order, the
plan is feasible, and the LP value is a lower bound: the result reports it (``bound``), so the
gap is stated, never assumed away. With equal group sizes, a window b - 1, b, b + 1 and budget
b (plus the scale overhead, equal at every width), the room left above the all-(b - 1) plan is
a whole number of steps, no step is fractional, and the plan is optimal.
"""

from __future__ import annotations

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable, GroupIndex
from mpsearch.core.errors import ConfigError
from mpsearch.solvers.base import RTOL, SOLVERS, Solver, SolveResult, Status

__all__ = ["PerUnitBudget", "unit_knapsack"]


def _hull_steps(cost: np.ndarray, storage: np.ndarray) -> tuple[np.ndarray, ...]:
    """Steps along each group's lower convex hull, from its least-storage choice, while cost falls.

    ``cost``/``storage``: (groups, choices), choices sorted by storage. Returns arrays over steps:
    group, from-choice, to-choice, storage added, cost added (negative), step number in its group.
    """
    n, c = cost.shape
    at = np.zeros(n, np.int64)
    rows = np.arange(n)
    parts = []
    for k in range(c - 1):
        ds = storage - storage[rows, at][:, None]
        dc = cost - cost[rows, at][:, None]
        later = np.arange(c)[None, :] > at[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            saving = np.where(later & (ds > 0), -dc / ds, -np.inf)
        best = saving.max(axis=1)
        # farthest choice among equally good ones: one step instead of two of equal slope
        nxt = c - 1 - np.argmax((saving == best[:, None])[:, ::-1], axis=1)
        move = best > 0
        if not move.any():
            break
        g = rows[move]
        parts.append((g, at[move], nxt[move], storage[g, nxt[move]] - storage[g, at[move]],
                      cost[g, nxt[move]] - cost[g, at[move]], np.full(len(g), k)))
        at = np.where(move, nxt, at)
    if not parts:
        return tuple(np.empty(0, t) for t in (np.int64, np.int64, np.int64, float, float, np.int64))
    return tuple(np.concatenate(p) for p in zip(*parts))


def unit_knapsack(cost: np.ndarray, storage: np.ndarray, capacity: float) -> tuple[np.ndarray, float, bool] | None:
    """Choice per group (column index) minimizing the summed cost with summed storage <= capacity.

    Returns ``(choice, lp_bound, optimal)``, or None when even the least-storage plan does not fit.
    ``cost`` and ``storage`` are (groups, choices) with choices sorted by storage in every row.
    """
    rows = np.arange(len(cost))
    choice = np.zeros(len(cost), np.int64)
    room = capacity - float(storage[:, 0].sum())
    if room < -RTOL * max(abs(capacity), 1.0):
        return None
    base = float(cost[:, 0].sum())
    group, frm, to, ds, dc, k = _hull_steps(cost, storage)
    order = np.lexsort((k, group, dc / ds))  # most cost saved per stored bit first (dc/ds most negative)
    used = np.cumsum(ds[order])
    fits = int(np.searchsorted(used, room * (1 + RTOL), side="right"))
    taken = order[:fits]
    np.maximum.at(choice, group[taken], to[taken])  # a group's hull steps only move up
    bound = base + float(dc[taken].sum())
    if fits == len(order):
        return choice, bound, True
    spare = room - (float(used[fits - 1]) if fits else 0.0)
    crit = order[fits]
    bound += spare / ds[crit] * dc[crit]
    for s in order[fits:]:  # fill what still fits, each group's steps in hull order
        if ds[s] <= spare and choice[group[s]] == frm[s]:
            choice[group[s]] = to[s]
            spare -= ds[s]
    objective = float(cost[rows, choice].sum())
    return choice, bound, objective <= bound + 1e-12 * max(abs(bound), 1.0)


@SOLVERS.register("slim")
class PerUnitBudget(Solver):
    """SliM-LLM's rule: each unit meets the ``avg_bits`` budget on its own (module docstring).

    Registered as ``"slim"`` (``mpsearch search --solver slim``). Group-granularity tables and
    ``avg_bits`` budgets only. ``status`` is optimal when every unit's LP relaxation was integral
    (optimal *under the rule*), else feasible, with the summed LP bound in ``bound``.

    Not a solver of the global budget: a budget every plan of the table can meet may still leave
    some unit unable to meet it alone (a unit pinned wider, a narrower window), and the result is
    then infeasible. ``contract_skip`` says so to the generic solver contract; ``seed`` is taken
    as every solver takes it and changes nothing.

    Example:
        >>> # costs: a group table with bits (2, 3, 4); budget 3 code bits + 24 / G overhead bits
        >>> # PerUnitBudget().solve(costs, Budget.avg_bits(3 + 24 / 128)).plan
    """

    name = "slim"
    exact = False
    contract_skip = ("a per-unit rule: each unit must meet the budget alone, so budgets the table as a whole can "
                     "meet may be infeasible, and layer tables are refused; checked in tests/solvers/test_slim.py")

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = seed

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        if not isinstance(costs.items, GroupIndex) or len(budgets) != 1 or budgets[0].kind != "avg_bits" or costs.ties:
            raise ConfigError(f"{self.name} needs a group-granularity table without ties and one avg_bits budget, but got "
                              f"{type(costs.items).__name__} items, {len(costs.ties)} ties and budgets "
                              f"{[b.kind for b in budgets]}. Build the table with a group_size quantizer, or use 'ilp'.")
        target = budgets[0].value
        choice = np.empty(costs.n_items, np.int64)
        bound, optimal, gaps = 0.0, True, {}
        for unit in costs.items.units:
            part = costs.items.unit_slice(unit)
            allowed = np.flatnonzero(costs.allowed[part.start])
            storage = costs.storage_bits[part][:, allowed]
            order = np.argsort(storage[0], kind="stable")
            cols = allowed[order]
            solved = unit_knapsack(costs.cost[part][:, cols], costs.storage_bits[part][:, cols],
                                   target * float(costs.n_weights[part].sum()))
            if solved is None:
                least = float(costs.storage_bits[part][:, cols[0]].sum() / costs.n_weights[part].sum())
                return SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budgets, solver=self.name,
                                   info={"unit": unit, "unit_min_avg_bits": least})
            pick, unit_bound, unit_optimal = solved
            choice[part] = cols[pick]
            bound += unit_bound
            optimal &= unit_optimal
            if not unit_optimal:
                gaps[unit] = float(costs.cost[part][np.arange(len(pick)), cols[pick]].sum()) - unit_bound
        return SolveResult(status=Status.OPTIMAL if optimal else Status.FEASIBLE, costs=costs, budgets=budgets,
                           choice=choice, bound=bound, solver=self.name, info={"unit_gaps": gaps})
