"""What every solver shares: the result type, the base class and tie collapsing.

Solvers work on arrays only (numpy, no torch). A solver gets a
:class:`~mpsearch.core.costs.CostTable` and one or more :class:`~mpsearch.core.budget.Budget`
and returns a :class:`SolveResult`. Infeasible is a status, not an exception;
asking an infeasible result for its plan raises
:class:`~mpsearch.core.errors.InfeasibleBudgetError` naming the smallest feasible budget.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from mpsearch.core.budget import Budget, as_budgets
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BudgetTooLargeError, InfeasibleBudgetError, MPSearchError
from mpsearch.core.registry import Registry

SOLVERS: Registry[Solver] = Registry("solver")

# Budgets are compared with this relative slack, so that float rounding in a
# resource sum never turns a budget that is met exactly into a violation.
RTOL = 1e-9
# A budget above the largest useful one is rejected only beyond this relative slack, so a value
# read back from a printed maximum (7 significant digits) or summed in another order stays valid.
CEILING_RTOL = 1e-6


class Status(str, Enum):
    OPTIMAL = "optimal"  # proven optimal (within the solver's tolerance)
    FEASIBLE = "feasible"  # a valid plan, optimality not proven (heuristic, or gap > 0)
    TIME_LIMIT = "time_limit"  # stopped at the time limit; plan is the best found so far
    INFEASIBLE = "infeasible"  # no plan meets the budgets


@dataclass(frozen=True, kw_only=True, eq=False)
class SolveResult:
    """The outcome of one solve."""

    status: Status
    costs: CostTable
    budgets: tuple[Budget, ...]
    choice: np.ndarray | None = None
    objective: float | None = None
    bound: float | None = None
    seconds: float = 0.0
    solver: str = ""
    min_feasible: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.choice is not None

    @property
    def gap(self) -> float | None:
        """Relative optimality gap (objective - bound) / |objective|, when a bound is known."""
        if self.objective is None or self.bound is None:
            return None
        if self.objective == 0:
            return 0.0
        return max(0.0, (self.objective - self.bound) / abs(self.objective))

    @property
    def usage(self) -> dict[str, float]:
        if self.choice is None:
            return {}
        return {b.kind: self.costs.usage(self.choice, b) for b in self.budgets}

    def _require(self) -> np.ndarray:
        if self.choice is None:
            if self.status == Status.TIME_LIMIT:
                raise InfeasibleBudgetError(
                    f"a plan needs the solver to find one, but {self.solver!r} hit its time limit before "
                    "the first. Give it more time (time_limit) or use a faster solver."
                )
            if self.min_feasible and all(self.min_feasible[b.kind] <= b.value * (1 + RTOL) for b in self.budgets):
                raise InfeasibleBudgetError(
                    f"budgets must be met together, but {', '.join(b.describe() for b in self.budgets)} are "
                    f"each feasible alone (floors {', '.join(f'{k} >= {v:.6g}' for k, v in self.min_feasible.items())}) "
                    "and infeasible together. Raise one of them."
                )
            needs = ", ".join(f"{k} >= {v:.6g}" for k, v in self.min_feasible.items())
            raise InfeasibleBudgetError(
                f"the budget must be at least the smallest feasible one, but "
                f"{', '.join(b.describe() for b in self.budgets)} is infeasible. "
                f"Raise it to {needs or 'a larger value'}."
            )
        return self.choice

    @property
    def plan(self):
        """The :class:`~mpsearch.core.plan.BitPlan`; raises InfeasibleBudgetError when there is none."""
        choice = self._require()
        return self.costs.plan(
            choice,
            budget=[{"kind": b.kind, "value": b.value} for b in self.budgets],
            solver=self.solver,
            objective=self.objective,
        )

    @property
    def bits(self) -> dict[str, int]:
        choice = self._require()
        return {n: self.costs.bits[int(c)] for n, c in zip(self.costs.items, choice)}


@dataclass(frozen=True, eq=False)
class Reduced:
    """A cost table with every tie group merged into one super-item.

    ``members[r]`` lists the original items of super-item ``r``; its cost and
    resources are the sums over its members, and a choice is allowed only where
    every member allows it.
    """

    members: tuple[tuple[int, ...], ...]
    cost: np.ndarray
    allowed: np.ndarray
    matrices: tuple[np.ndarray, ...]
    limits: tuple[float, ...]

    def expand(self, choice: np.ndarray, n_items: int) -> np.ndarray:
        out = np.empty(n_items, np.int64)
        for r, group in enumerate(self.members):
            out[list(group)] = choice[r]
        return out


def reduce(costs: CostTable, budgets: Iterable[Budget]) -> Reduced:
    """Collapse ties so that solvers see independent items."""
    budgets = tuple(budgets)
    tied = {i for g in costs.ties for i in g}
    members = [tuple(g) for g in costs.ties] + [(i,) for i in range(costs.n_items) if i not in tied]
    members.sort(key=lambda g: g[0])
    if not costs.ties:
        if costs.allowed.all():  # nothing to mask: no copies of the table's arrays
            return Reduced(tuple(members), costs.cost, costs.allowed, tuple(b.matrix(costs) for b in budgets),
                           tuple(b.value for b in budgets))
        cost = np.where(costs.allowed, costs.cost, 0.0)
        mats = tuple(np.where(costs.allowed, b.matrix(costs), 0.0) for b in budgets)
        return Reduced(tuple(members), cost, costs.allowed.copy(), mats, tuple(b.value for b in budgets))
    cost = np.zeros((len(members), costs.n_choices))
    allowed = np.zeros_like(cost, bool)
    base = [np.where(costs.allowed, b.matrix(costs), 0.0) for b in budgets]
    mats = [np.zeros_like(cost) for _ in budgets]
    safe_cost = np.where(costs.allowed, costs.cost, 0.0)
    for r, group in enumerate(members):
        idx = list(group)
        allowed[r] = costs.allowed[idx].all(axis=0)
        cost[r] = safe_cost[idx].sum(axis=0)
        for m, b in zip(mats, base):
            m[r] = b[idx].sum(axis=0)
    return Reduced(tuple(members), cost, allowed, tuple(mats), tuple(b.value for b in budgets))


def within(costs: CostTable, choice: np.ndarray, budgets: Iterable[Budget]) -> bool:
    """Whether an assignment meets every budget (with a tiny relative slack)."""
    return all(costs.usage(choice, b) <= b.value * (1 + RTOL) + 1e-12 for b in budgets)


def min_feasible(costs: CostTable, budgets: Iterable[Budget]) -> dict[str, float]:
    return {b.kind: costs.min_usage(b) for b in budgets}


def check_ceiling(costs: CostTable, budgets: Iterable[Budget | float] | None, *, kind: str = "avg_bits") -> None:
    """Raise :class:`BudgetTooLargeError` for a budget above the largest useful one.

    The largest useful budget is the usage of the most expensive valid assignment (for storage:
    every unit at its widest allowed choice); a larger one constrains nothing, and is more often a
    typo or a wrong unit than intended. A budget exactly at the maximum is valid. Plain numbers
    are budgets of ``kind``; ``None`` (a front without budget values) checks nothing.
    """
    tops: dict[str, float] = {}  # the maximum depends on the kind only: one pass per kind
    for b in budgets or ():
        b = b if isinstance(b, Budget) else Budget(kind=kind, value=float(b))
        if b.kind not in tops:
            tops[b.kind] = costs.max_usage(b)
        top = tops[b.kind]
        if b.value <= top * (1 + CEILING_RTOL) + 1e-12:
            continue
        what, unit = {"avg_bits": ("an average-bits budget", " bits/weight"),
                      "bytes": ("a bytes budget", " bytes")}.get(b.kind, (f"a {b.kind} budget", ""))
        if b.kind in ("avg_bits", "bytes"):
            why, fix = f"every unit at its widest allowed choice, up to {costs.bits[-1]} bits", ", or add wider bit choices"
        else:
            why, fix = "every unit at its most expensive allowed choice", ", or drop this budget"
        digits = 7 if b.kind == "avg_bits" else 10  # either way well inside CEILING_RTOL when typed back
        value, limit = f"{b.value:.{digits}g}", f"{top:.{digits}g}"
        raise BudgetTooLargeError(
            f"a budget must be at most the largest useful one, but {what} of {value}{unit} is above "
            f"{limit}{unit} ({why}). Lower it to at most {b.kind}={limit}{fix}."
        )


class Solver:
    """Base class. Subclasses set the capability attributes and implement :meth:`_solve`."""

    name: str = "solver"
    exact: bool = False
    multi_objective: bool = False
    requires: tuple[str, ...] = ()

    @classmethod
    def is_available(cls) -> bool:
        return all(importlib.util.find_spec(mod) is not None for mod in cls.requires)

    def solve(self, costs: CostTable, budget: Budget | Iterable[Budget] | float, *, time_limit: float | None = None) -> SolveResult:
        """Find the lowest-cost assignment that meets every budget."""
        import time

        if not isinstance(costs, CostTable):
            raise MPSearchError(f"`costs` must be a CostTable, but got {type(costs).__name__}.")
        if not self.is_available():
            raise MPSearchError(
                f"solver {self.name!r} needs {list(self.requires)}, which are not installed. "
                f"Install them (pip install {' '.join(self.requires)}) or pick another solver."
            )
        budgets = as_budgets(budget)
        for b in budgets:
            if b.kind not in ("avg_bits", "bytes"):
                b.matrix(costs)  # unknown resource kinds fail here, clearly
        check_ceiling(costs, budgets)  # above the all-widest plan: an error, not a no-op constraint
        start = time.perf_counter()
        floor = min_feasible(costs, budgets)
        if any(floor[b.kind] > b.value * (1 + RTOL) + 1e-12 for b in budgets):
            return SolveResult(
                status=Status.INFEASIBLE, costs=costs, budgets=budgets, solver=self.name,
                min_feasible=floor, seconds=time.perf_counter() - start,
            )
        result = self._solve(costs, budgets, time_limit=time_limit)
        if result.choice is not None and not within(costs, result.choice, budgets):
            raise MPSearchError(f"solver {self.name!r} returned a plan over budget; this is a bug, please report it.")
        return SolveResult(
            status=result.status, costs=costs, budgets=budgets, choice=result.choice,
            objective=None if result.choice is None else costs.objective(result.choice),
            bound=result.bound, seconds=time.perf_counter() - start, solver=self.name,
            min_feasible=floor if result.status == Status.INFEASIBLE else {}, info=result.info,
        )

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        raise NotImplementedError


def get_solver(solver: str | Solver, **options: Any) -> Solver:
    """A solver instance from a registered name or an instance."""
    if isinstance(solver, Solver):
        if options:
            raise MPSearchError("solver options go to the constructor when you pass an instance.")
        return solver
    if isinstance(solver, str):
        return SOLVERS.get(solver)(**options)
    raise MPSearchError(f"`solver` must be a name among {list(SOLVERS.names())} or a Solver instance, but got {solver!r}.")
