"""Lagrangian relaxation of the multiple-choice knapsack, for group-wise allocation at LLM scale.

Relaxing the budget with a multiplier ``lam`` splits the problem per item:
each item takes the choice minimizing ``cost + lam * resource``, which is a
vertex of its lower convex hull. As ``lam`` falls, items move up their hulls
one segment at a time, in the order of the segments' cost saved per unit of
resource. The multiplier is searched over those breakpoints (a log-spaced
histogram of the segment ratios, narrowed until the critical segment is
found: two or three passes over the items instead of a sort), which gives

- the integer plan of every segment above the critical one (within budget),
- a fill step that spends the leftover budget on the next hull segments with
  the best ratio that still fit,
- the dual bound ``sum_i min_j (c_ij + lam r_ij) - lam * limit`` at the
  critical multiplier, equal to the LP-relaxation optimum; every plan carries
  a certified gap against it.

Memory is the input plus about 26 bytes per item and choice (hull, ratios),
so 10^8 items x 4 choices in float32 fit in a few GiB.

:class:`LagrangeSolver` (``polish=True``) then re-solves exactly the 16 items
least certain at the multiplier (the "core", by merging Pareto lists; up to 2^16 cells) and, on
small tables, runs an exchange local search: on layer-wise tables, where a
few items decide the rounding, this closes most of the gap to the ILP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import CostTableError
from mpsearch.solvers._polish import core_exact, polish
from mpsearch.solvers._problem import single_budget
from mpsearch.solvers.base import SOLVERS, Solver, SolveResult, Status


def _kernels():
    """The Numba kernels, imported on first use so that importing the solvers stays cheap."""
    from mpsearch.solvers import _hull

    return _hull


BINS = 1 << 16
POLISH_CELLS = 1 << 16  # items x choices up to which the core re-solve runs (layer-wise tables)
COLLECT = 1 << 20  # finish by sorting once the critical bin holds at most this many segments


@dataclass(frozen=True, eq=False)
class LagrangeSolution:
    """The array-level answer: ``choice`` (None when infeasible), its cost and resource, the dual bound."""

    choice: np.ndarray | None
    objective: float
    used: float
    bound: float
    multiplier: float
    min_resource: float

    @property
    def gap(self) -> float:
        if self.choice is None:
            return math.inf
        return 0.0 if self.objective == 0 else max(0.0, (self.objective - self.bound) / abs(self.objective))


def _finish(eff, nv, res, verts, room_of, lo: float, hi: float, count: int):
    """Take every segment with ratio >= hi, then the segments in [lo, hi) by ratio while they fit."""
    H = _kernels()
    taken = np.zeros(eff.shape[0], np.int8)
    H.count_at_least(eff, nv, hi, taken)
    room = room_of(taken)
    if room < 0:
        return None
    idx, val = H.collect(eff, nv, lo, hi, count)
    order = np.lexsort((idx, -val))
    room, stop = H.take_sorted(idx[order], res, verts, taken, eff.shape[1], room)
    if stop < 0 and lo > 0:
        return None  # everything in range fits: segments below `lo` might too
    crit = -1.0 if stop < 0 else float(val[order[stop]])
    return taken, room, crit


def lagrange_solve(
    cost: np.ndarray,
    resource: np.ndarray,
    limit: float,
    *,
    allowed: np.ndarray | None = None,
    fill: bool = True,
    fill_rounds: int = 16,
) -> LagrangeSolution:
    """Minimize ``sum_i cost[i, x_i]`` subject to ``sum_i resource[i, x_i] <= limit``.

    Arrays are items x choices, float32 or float64 (not copied); non-finite
    costs and ``allowed == False`` mark choices an item does not have.

    >>> import numpy as np
    >>> cost = np.array([[4.0, 1.0, 0.0], [9.0, 2.0, 0.5]])
    >>> res = np.array([[2.0, 4.0, 8.0], [2.0, 4.0, 8.0]])
    >>> sol = lagrange_solve(cost, res, 10.0)
    >>> sol.choice.tolist(), sol.objective, sol.bound <= sol.objective
    ([1, 1], 3.0, True)
    """
    H = _kernels()
    cost = np.asarray(cost)
    res = np.asarray(resource)
    if cost.ndim != 2 or cost.shape != res.shape:
        raise CostTableError(f"`cost` and `resource` must be items x choices of one shape, but got {cost.shape} and {res.shape}.")
    verts, nv, eff = H.build_hull(cost, res, allowed)
    if (nv == 0).any():
        bad = int(np.flatnonzero(nv == 0)[0])
        raise CostTableError(f"every item needs an allowed finite choice, but item {bad} has none. Check its costs.")
    base_cost, base_res = H.base_sums(cost, res, verts)
    if base_res > limit:
        return LagrangeSolution(None, math.nan, math.nan, math.nan, math.nan, base_res)
    choice = np.empty(cost.shape[0], np.int64)

    def room_of(taken: np.ndarray) -> float:
        H.choose(verts, taken, choice)
        return limit - H.sums_at(cost, res, choice)[1]

    lo, hi = H.eff_range(eff, nv)
    result = None
    if math.isfinite(hi):
        ranges = [(lo, float(np.nextafter(hi, np.inf)), int(np.count_nonzero(eff > 0)))]
        while result is None:
            a, b, n_in = ranges[-1]
            if n_in <= COLLECT or len(ranges) > 8 or b <= a:
                result = _finish(eff, nv, res, verts, room_of, a, b, n_in)
                if result is None:  # a bin edge rounded the other way: finish on the range before
                    a, b, _ = ranges[-2] if len(ranges) > 1 else ranges[-1]
                    result = _finish_any(eff, nv, res, verts, room_of, a, b)
                break
            weights = np.zeros(BINS)
            counts = np.zeros(BINS, np.int64)
            above = H.histogram(eff, nv, res, verts, a, b, weights, counts)
            room = limit - base_res - above
            crossed = np.flatnonzero(np.cumsum(weights[::-1]) > room)
            if len(ranges) == 1 and room >= 0 and not len(crossed):  # the budget covers every upgrade
                taken = (nv - 1).astype(np.int8)
                result = (taken, room_of(taken), -1.0)
                break
            if room < 0 or not len(crossed):
                result = _finish_any(eff, nv, res, verts, room_of, a, b)
                break
            k = BINS - 1 - int(crossed[0])
            la, lb = math.log(a), math.log(b)
            edge_lo = a if k == 0 else math.exp(la + (lb - la) * k / BINS)
            edge_hi = b if k == BINS - 1 else math.exp(la + (lb - la) * (k + 1) / BINS)
            ranges.append((edge_lo, edge_hi, int(counts[max(k - 1, 0): k + 2].sum())))
    if result is None:
        taken = np.zeros(cost.shape[0], np.int8)
        result = (taken, room_of(taken), -1.0)
    taken, room, crit = result
    if fill:
        for _ in range(fill_rounds):
            items, val = H.next_candidates(eff, nv, res, verts, taken, room)
            if not len(items):
                break
            if len(items) > COLLECT:
                top = np.argpartition(-val, COLLECT)[:COLLECT]
                items, val = items[top], val[top]
            order = np.lexsort((items, -val))
            room, moved = H.fill_items(items[order], res, verts, taken, room)
            if moved == 0:
                break
    H.choose(verts, taken, choice)
    objective, used = H.sums_at(cost, res, choice)
    lam = max(crit, 0.0)
    bound = min(H.dual_value(cost, res, verts, nv, lam) - lam * limit, objective)
    return LagrangeSolution(choice, objective, used, bound, lam, base_res)


def _finish_any(eff, nv, res, verts, room_of, a: float, b: float):
    """Finish by sorting the range, widening to every segment if the range was inconsistent."""
    n_in = int(np.count_nonzero((eff >= a) & (eff < b)))
    result = _finish(eff, nv, res, verts, room_of, a, b, n_in)
    if result is None:
        result = _finish(eff, nv, res, verts, room_of, 0.0, math.inf, int(np.count_nonzero(eff > 0)))
    return result


@SOLVERS.register("lagrange")
class LagrangeSolver(Solver):
    """Lagrangian / convex-hull multiple-choice knapsack with a certified gap (one budget).

    >>> from mpsearch.solvers import LagrangeSolver
    >>> LagrangeSolver().exact, LagrangeSolver.requires
    (False, ('numba',))
    """

    name = "lagrange"
    exact = False
    multi_objective = False
    requires = ("numba",)

    def __init__(self, *, fill: bool = True, polish: bool = True, seed: int = 0) -> None:
        self.fill = bool(fill)
        self.polish = bool(polish)  # exchange local search on small (layer-wise) tables
        self.seed = seed  # deterministic; kept for the common solver signature

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        prob = single_budget(costs, budgets, self.name)
        sol = lagrange_solve(prob.cost, prob.resource, prob.limit, allowed=prob.allowed, fill=self.fill)
        info = {"multiplier": sol.multiplier, "lp_bound": sol.bound}
        if sol.choice is None:
            return SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budgets, info=info)
        choice = sol.choice
        if self.polish and choice.size * prob.cost.shape[1] <= POLISH_CELLS:
            choice = core_exact(prob.cost, prob.resource, prob.allowed, choice.copy(), prob.limit, sol.multiplier)
            choice = polish(prob.cost, prob.resource, prob.allowed, choice, prob.limit)
        objective = costs.objective(prob.expand(choice))
        status = Status.OPTIMAL if objective <= sol.bound + 1e-12 * abs(objective) else Status.FEASIBLE
        return SolveResult(status=status, costs=costs, budgets=budgets, choice=prob.expand(choice), bound=sol.bound, info=info)
