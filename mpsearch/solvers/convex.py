"""The BAQ closed form: water-filling bits on a fitted exponential cost model, then rounding.

Model: item i at b bits costs ``a_i 2^(-2 b)`` (``a_i = s_i n_i``, the
sensitivity times the weights' quantization noise scale) and uses
``w_i b + o_i`` of the budget's resource. ``a_i`` is fitted per item from its
cost column by least squares on the allowed widths,
``a_i = sum_b c_ib 2^(-2b) / sum_b 2^(-4b)``, and ``(w_i, o_i)`` from its
resource column. Setting the derivative of the Lagrangian to zero gives equal
marginal loss per resource everywhere (water-filling):

    b_i = clip(c + 0.5 * log2(a_i / w_i), b_min_i, b_max_i)

with the water level ``c`` found by bisection so the modelled resource meets
the budget. Each ``b_i`` is rounded down onto the item's allowed widths, then
repaired on the real table: lowered (greedy, least cost per resource saved)
while over budget and raised (best cost saved per resource) while it fits;
on small tables an exchange local search (one or two items at a time) follows.
The gap is reported against the LP relaxation of the multiple-choice knapsack
(the per-item lower convex hulls), computed by :func:`lagrange_solve`.
"""

from __future__ import annotations

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.solvers._polish import core_exact, polish
from mpsearch.solvers._problem import single_budget
from mpsearch.solvers.base import SOLVERS, Solver, SolveResult, Status
from mpsearch.solvers.greedy import lower_until_within, raise_while_fits
from mpsearch.solvers.lagrange import POLISH_CELLS, lagrange_solve


def fit_scale(cost: np.ndarray, bits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Least-squares ``a_i`` of ``cost[i, b] ~ a_i 2^(-2b)`` over each item's allowed widths."""
    basis = 2.0 ** (-2.0 * bits)
    safe = np.where(allowed, cost, 0.0)
    return np.maximum((safe * basis).sum(axis=1) / (allowed * basis**2).sum(axis=1), 0.0)


def fit_linear(res: np.ndarray, bits: np.ndarray, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-item least-squares ``res[i, b] ~ w_i b + o_i`` (one allowed width: w_i = res / b, o_i = 0)."""
    k = allowed.sum(axis=1)
    bm = (allowed * bits).sum(axis=1) / k
    rm = np.where(allowed, res, 0.0).sum(axis=1) / k
    db = np.where(allowed, bits - bm[:, None], 0.0)
    var = (db**2).sum(axis=1)
    w = np.where(var > 0, (db * np.where(allowed, res - rm[:, None], 0.0)).sum(axis=1) / np.where(var > 0, var, 1.0), rm / bm)
    w = np.maximum(w, 1e-12 * np.maximum(rm, 1e-300))
    return w, rm - w * bm


def water_fill(a: np.ndarray, w: np.ndarray, o: np.ndarray, lo: np.ndarray, hi: np.ndarray, limit: float) -> np.ndarray:
    """The continuous optimum of sum a_i 2^(-2 b_i) s.t. sum (w_i b_i + o_i) <= limit, lo <= b <= hi."""
    offset = 0.5 * np.log2(np.maximum(a, 1e-300) / w)

    def bits_at(c: float) -> np.ndarray:
        return np.clip(c + offset, lo, hi)

    def used(c: float) -> float:
        return float((w * bits_at(c) + o).sum())

    if used(-1e3) >= limit:
        return lo.astype(float)
    lo_c, hi_c = float(lo.min() - offset.max()) - 1, float(hi.max() - offset.min()) + 1
    for _ in range(200):
        mid = 0.5 * (lo_c + hi_c)
        lo_c, hi_c = (mid, hi_c) if used(mid) <= limit else (lo_c, mid)
        if hi_c - lo_c < 1e-12:
            break
    return bits_at(lo_c)


@SOLVERS.register("convex")
class ConvexSolver(Solver):
    """BAQ closed form (water-filling on a fitted exponential model) with rounding and repair.

    >>> from mpsearch.solvers import ConvexSolver
    >>> ConvexSolver().exact
    False
    """

    name = "convex"
    exact = False
    multi_objective = False
    requires = ("numba",)  # for the LP bound

    def __init__(self, *, polish: bool = True, seed: int = 0) -> None:
        self.polish = bool(polish)  # exchange local search after the repair, on small tables
        self.seed = seed  # deterministic; kept for the common solver signature

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        prob = single_budget(costs, budgets, self.name)
        allowed = np.ones(prob.cost.shape, bool) if prob.allowed is None else prob.allowed
        cost = np.where(allowed, prob.cost, np.inf).astype(np.float64)
        res = np.asarray(prob.resource, np.float64)
        bits = np.asarray(costs.bits, np.float64)[None, :]
        a = fit_scale(cost, bits, allowed)
        w, o = fit_linear(res, bits, allowed)
        lo = np.where(allowed, bits, np.inf).min(axis=1)
        hi = np.where(allowed, bits, -np.inf).max(axis=1)
        b = water_fill(a, w, o, lo, hi, prob.limit)
        # round down onto the allowed widths (the lowest allowed one if none is below)
        below = allowed & (bits <= b[:, None] + 1e-9)
        choice = np.where(below.any(axis=1), bits.shape[1] - 1 - np.argmax(below[:, ::-1], axis=1), np.argmax(allowed, axis=1))
        choice = choice.astype(np.int64)
        ok = lower_until_within(cost, (res,), (prob.limit,), allowed, choice)
        if not ok:
            return SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budgets, info={"heuristic": True})
        raise_while_fits(cost, (res,), (prob.limit,), allowed, choice)
        relaxed = lagrange_solve(prob.cost, prob.resource, prob.limit, allowed=prob.allowed, fill=False)
        if self.polish and cost.size <= POLISH_CELLS:
            core_exact(cost, res, allowed, choice, prob.limit, relaxed.multiplier)
            polish(cost, res, allowed, choice, prob.limit)
        bound = relaxed.bound
        objective = float(cost[np.arange(len(choice)), choice].sum())
        status = Status.OPTIMAL if objective <= bound + 1e-12 * abs(objective) else Status.FEASIBLE
        info = {"continuous_bits": b, "scale": a, "lp_bound": bound}
        return SolveResult(status=status, costs=costs, budgets=budgets, choice=prob.expand(choice), bound=bound, info=info)
