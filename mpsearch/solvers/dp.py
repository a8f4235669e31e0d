"""The Pareto dynamic program (ZeroQ style): the whole cost-resource front in one pass.

The budget's resource is put on a grid. When every resource value is an
integer (storage bits are), the grid step is the gcd of each item's resource
above its smallest one, and the program is exact at every budget. Otherwise
the range is cut into ``steps`` steps and each choice's resource is rounded up
to the grid, so every plan found meets its budget (status ``feasible``, with
the LP bound for the gap).

``best[t]`` is the least cost of the items so far using exactly ``t`` grid
steps above their minimum; one vectorized update per item and choice, with the
argmin kept per (item, step) for backtracking. Memory: items x steps bytes.
"""

from __future__ import annotations

import math
from functools import reduce as fold

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import ConfigError
from mpsearch.solvers._problem import Problem, single_budget
from mpsearch.solvers.base import SOLVERS, Solver, SolveResult, Status, check_ceiling
from mpsearch.solvers.lagrange import lagrange_solve


class _Table:
    """The DP over one problem: ``best`` per grid step and the choices to backtrack."""

    def __init__(self, prob: Problem, steps: int) -> None:
        allowed = np.ones(prob.cost.shape, bool) if prob.allowed is None else prob.allowed
        res = np.where(allowed, np.asarray(prob.resource, np.float64), np.inf)
        self.base = res.min(axis=1)
        span = np.where(allowed, res - self.base[:, None], 0.0)
        integral = bool(np.all(span == np.round(span))) and float(span.max()) < 2**53
        unit = float(fold(math.gcd, np.round(span).astype(np.int64).ravel().tolist(), 0)) if integral else 0.0
        self.exact = integral and (unit == 0 or span.max(axis=1).sum() / unit <= steps)
        if not self.exact:
            unit = max(float(span.max(axis=1).sum()) / steps, 1e-300)
        self.unit = unit or 1.0
        q = np.round(span / self.unit) if self.exact else np.ceil(span / self.unit - 1e-9)
        self.q = np.where(allowed, q, -1).astype(np.int64)
        self.cost = np.where(allowed, np.asarray(prob.cost, np.float64), np.inf)
        n, c = self.cost.shape
        total = int(self.q.max(axis=1).sum())
        best = np.full(total + 1, np.inf)
        best[0] = 0.0
        self.arg = np.zeros((n, total + 1), np.int8)
        top = 0
        for i in range(n):
            new = np.full(total + 1, np.inf)
            for j in range(c):
                s = int(self.q[i, j])
                if s < 0:
                    continue
                cand = best[: top + 1] + self.cost[i, j]
                view = new[s : s + top + 1]
                better = cand < view
                view[better] = cand[better]
                self.arg[i, s : s + top + 1][better] = j
            top += int(self.q[i].max())
            best = new
        self.best = best
        floor = np.minimum.accumulate(best)
        improved = best < np.concatenate([[np.inf], floor[:-1]])
        self.improved = np.flatnonzero(improved)  # grid points of the front
        self.at = np.maximum.accumulate(np.where(improved, np.arange(len(best)), 0))

    def steps_for(self, limit: float) -> int:
        """The largest grid step whose plans meet ``limit``, or -1."""
        room = (limit - float(self.base.sum())) / self.unit
        return -1 if room < -1e-9 else min(int(math.floor(room + 1e-9)), len(self.best) - 1)

    def backtrack(self, t: int) -> np.ndarray:
        t = int(self.at[t])
        choice = np.empty(self.cost.shape[0], np.int64)
        for i in range(self.cost.shape[0] - 1, -1, -1):
            j = int(self.arg[i, t])
            choice[i] = j
            t -= int(self.q[i, j])
        return choice


@SOLVERS.register("dp")
class DPSolver(Solver):
    """Pareto dynamic program over a resource grid; exact when resources are integers on the grid.

    >>> from mpsearch.solvers import DPSolver
    >>> DPSolver(steps=10_000).steps
    10000
    """

    name = "dp"
    exact = True  # exact when the resources are integers (storage bits); see the module doc
    multi_objective = False
    requires = ()

    def __init__(self, *, steps: int = 200_000, seed: int = 0) -> None:
        if not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"`steps` must be a positive integer, but got steps={steps!r}. Pass e.g. steps=100_000.")
        self.steps = steps
        self.seed = seed  # deterministic; kept for the common solver signature

    def _result(self, costs: CostTable, budgets: tuple[Budget, ...], prob: Problem, table: _Table) -> SolveResult:
        t = table.steps_for(prob.limit)
        if t < 0 or not np.isfinite(table.best[table.at[t]]):
            return SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budgets)
        choice = table.backtrack(t)
        info = {"grid_step": table.unit, "grid_exact": table.exact}
        if table.exact:
            return SolveResult(status=Status.OPTIMAL, costs=costs, budgets=budgets, choice=prob.expand(choice),
                               bound=float(table.best[table.at[t]]), info=info)
        bound = lagrange_solve(prob.cost, prob.resource, prob.limit, allowed=prob.allowed, fill=False).bound
        return SolveResult(status=Status.FEASIBLE, costs=costs, budgets=budgets, choice=prob.expand(choice), bound=bound, info=info)

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        prob = single_budget(costs, budgets, self.name)
        return self._result(costs, budgets, prob, _Table(prob, self.steps))

    def front(self, costs: CostTable, budgets=None, *, kind: str = "avg_bits"):
        """The front in one pass: one result per budget value, or every front point when ``budgets`` is None.

        >>> # DPSolver().front(costs, kind="avg_bits").to_frame()
        """
        import time

        from mpsearch.solvers.pareto import ParetoFront

        start = time.perf_counter()
        probe = Budget(kind=kind, value=1.0)
        prob = single_budget(costs, (probe,), self.name)
        table = _Table(prob, self.steps)
        scale = prob.limit / probe.value  # grid units per budget unit (bits per avg bit, ...)
        if budgets is None:
            values = [float(table.base.sum() + t * table.unit) / scale for t in table.improved]
        else:
            values = [b.value if isinstance(b, Budget) else float(b) for b in budgets]
            check_ceiling(costs, values, kind=kind)
        results = []
        for v in values:
            budget = (Budget(kind=kind, value=v),)
            p = Problem(prob.cost, prob.resource, prob.allowed, v * scale, prob.members, prob.n_items)
            if v * scale < float(table.base.sum()) * (1 - 1e-9):
                floor = {kind: costs.min_usage(budget[0])}
                results.append(SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budget, solver=self.name, min_feasible=floor))
                continue
            r = self._result(costs, budget, p, table)
            results.append(SolveResult(
                status=r.status, costs=costs, budgets=budget, choice=r.choice,
                objective=None if r.choice is None else costs.objective(r.choice), bound=r.bound,
                seconds=time.perf_counter() - start, solver=self.name, info=r.info,
            ))
        return ParetoFront(costs=costs, results=results, kind=kind)


def front(costs: CostTable, kind: str = "avg_bits", *, budgets=None, steps: int = 200_000):
    """The exact (on the grid) Pareto front of ``costs`` against ``kind`` in one DP pass.

    >>> # front(costs, "avg_bits").to_frame()            # every point of the front
    >>> # front(costs, "avg_bits", budgets=[2.5, 3, 4])  # the best plan at each budget
    """
    return DPSolver(steps=steps).front(costs, budgets, kind=kind)
