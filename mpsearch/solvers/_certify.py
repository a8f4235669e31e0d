"""Independent evidence about an integer program's answer: other solvers' plans, a local search, a bound.

A MILP backend proves optimality with floating-point tolerances; its claim is trusted only
as far as these checks leave it standing:

- :func:`heuristic_plans`: plans from the solvers that do not share the backend's numerics
  (Lagrangian relaxation with its exact core re-solve and exchange search and, on one budget
  whose resource grid is exact and small, the Pareto dynamic program, which is exact there;
  the greedy descent on any budgets);
- :func:`exchange`: the best single and pair moves from a plan, under every budget;
- :func:`lagrangian_bound`: a lower bound from the LP relaxation's budget multipliers,
  evaluated in float64 on the program itself, so that it is valid whatever the LP solver's
  tolerances (any multipliers >= 0 give a valid bound; good ones give a tight one).
"""

from __future__ import annotations

import importlib.util

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.solvers._reduce import Program, caps, meets
from mpsearch.solvers.base import Reduced

DP_CELLS = 2_000_000  # items x grid steps up to which the exact dynamic program runs as a check
PAIR_CELLS = 1024  # items x choices up to which pair moves are searched


def to_merged(red: Reduced, choice: np.ndarray) -> np.ndarray:
    """A plan over the table's items as a plan over the merged (tied) items."""
    return np.asarray(choice, np.int64)[[g[0] for g in red.members]]


def heuristic_plans(costs: CostTable, budgets: tuple[Budget, ...], red: Reduced) -> list[tuple[str, np.ndarray]]:
    """Plans over the merged items from the other solvers, each checked against the budgets."""
    from mpsearch.solvers.greedy import lower_until_within, raise_while_fits, widest

    plans = _single_budget_plans(costs, budgets, red) if len(budgets) == 1 else []
    if not plans:  # several budgets, or no Lagrangian plan: the greedy descent
        cost = np.where(red.allowed, red.cost, np.inf)
        choice = widest(red.allowed)
        limits = caps(red)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):  # ratios of costs over many decades
            if lower_until_within(cost, red.matrices, limits, red.allowed, choice):
                raise_while_fits(cost, red.matrices, limits, red.allowed, choice)
                plans.append(("greedy", choice))
    return [(name, c) for name, c in plans if meets(red, c)]


def _single_budget_plans(costs: CostTable, budgets: tuple[Budget, ...], red: Reduced) -> list[tuple[str, np.ndarray]]:
    from mpsearch.solvers._polish import core_exact, polish
    from mpsearch.solvers._problem import single_budget
    from mpsearch.solvers.dp import _Table
    from mpsearch.solvers.lagrange import POLISH_CELLS, lagrange_solve

    prob = single_budget(costs, budgets, "ilp")
    plans = []
    if importlib.util.find_spec("numba") is not None:
        sol = lagrange_solve(prob.cost, prob.resource, prob.limit, allowed=prob.allowed)
        if sol.choice is not None:
            choice = sol.choice.copy()
            if choice.size * prob.cost.shape[1] <= POLISH_CELLS:
                choice = core_exact(prob.cost, prob.resource, prob.allowed, choice, prob.limit, sol.multiplier)
                choice = polish(prob.cost, prob.resource, prob.allowed, choice, prob.limit)
            plans.append(("lagrange", to_merged(red, prob.expand(choice))))
    steps = max(DP_CELLS // max(prob.cost.shape[0], 1), 1)
    if _grid_exact(prob, steps):  # otherwise the grid rounds resources up: one more heuristic, not a check
        table = _Table(prob, steps)
        t = table.steps_for(prob.limit)
        if t >= 0 and np.isfinite(table.best[table.at[t]]):
            plans.append(("dp", to_merged(red, prob.expand(table.backtrack(t)))))
    return plans


def _grid_exact(prob, steps: int) -> bool:
    """Whether the dynamic program is exact on this problem within ``steps`` grid steps (see dp.py)."""
    allowed = np.ones(prob.cost.shape, bool) if prob.allowed is None else prob.allowed
    res = np.where(allowed, np.asarray(prob.resource, np.float64), np.inf)
    span = np.where(allowed, res - res.min(axis=1)[:, None], 0.0)
    if not (np.all(span == np.round(span)) and float(span.max()) < 2**53):
        return False
    unit = np.gcd.reduce(np.round(span).astype(np.int64).ravel())
    return bool(unit == 0 or span.max(axis=1).sum() / unit <= steps)


def exchange(red: Reduced, choice: np.ndarray, *, passes: int = 100) -> np.ndarray:
    """Apply the best improving single or pair move that keeps every budget until none is left."""
    n, c = red.cost.shape
    cost = np.where(red.allowed, red.cost, np.inf)
    mats = [np.where(red.allowed, m, np.inf) for m in red.matrices]
    limits = caps(red)
    choice = choice.copy()
    rows = np.arange(n)
    pairs = n * c <= PAIR_CELLS
    if pairs:
        owner = np.repeat(rows, c)
        same = owner[:, None] == owner[None, :]
    for _ in range(passes):
        now = cost[rows, choice]
        dc = (cost - now[:, None]).ravel()
        tol = 1e-12 * max(float(np.abs(now).sum()), np.finfo(float).tiny)
        single = dc.copy()
        drs = []
        for m, cap in zip(mats, limits):
            used = float(m[rows, choice].sum())
            dr = (m - m[rows, choice][:, None]).ravel()
            single[~(used + dr <= cap)] = np.inf
            drs.append((used, dr, cap))
        k1 = int(np.argmin(single))
        best, move = single[k1], (k1,)
        if pairs:
            pair = dc[:, None] + dc[None, :]
            bad = same.copy()
            for used, dr, cap in drs:
                bad |= ~(used + dr[:, None] + dr[None, :] <= cap)
            pair[bad] = np.inf
            k2 = int(np.argmin(pair))
            if pair.flat[k2] < best:
                best, move = pair.flat[k2], divmod(k2, n * c)
        if not best < -tol:
            break
        trial = choice.copy()
        for k in move:
            trial[k // c] = k % c
        if not meets(red, trial):  # the running sums were a hair off: stop rather than overshoot
            break
        choice = trial
    return choice


def lagrangian_bound(prog: Program) -> float | None:
    """A lower bound on the table's optimum: the Lagrangian of the program at the LP's budget multipliers.

    The reductions keep an optimal plan, so a bound on the program is a bound on the table.
    """
    from scipy.optimize import linprog
    from scipy.sparse import csr_array

    n_var, n_free = len(prog.rows), prog.n_free
    if n_var == 0:
        return prog.offset
    lam = np.zeros(len(prog.budget_rows))
    if prog.budget_rows:
        free = np.flatnonzero(prog.fixed < 0)
        eq_row = np.empty(len(prog.fixed), np.int64)
        eq_row[free] = np.arange(n_free)
        a_eq = csr_array((np.ones(n_var), (eq_row[prog.rows], np.arange(n_var))), shape=(n_free, n_var))
        res = linprog(prog.obj, A_ub=np.vstack(prog.budget_rows), b_ub=np.ones(len(prog.budget_rows)), A_eq=a_eq,
                      b_eq=np.ones(n_free), bounds=(0, 1), method="highs")
        if res.status == 2:  # the relaxation is infeasible, so is every plan
            return None
        if res.status == 0:  # otherwise multipliers 0: the bound is every item at its least cost
            lam = np.maximum(-np.asarray(res.ineqlin.marginals, np.float64), 0.0)
    priced = prog.obj + sum((w * row for w, row in zip(lam, prog.budget_rows)), np.zeros(n_var))
    per_item = np.full(len(prog.fixed), np.inf)
    np.minimum.at(per_item, prog.rows, priced)
    value = float(per_item[prog.fixed < 0].sum()) - float(lam.sum())
    return prog.cost(max(value, 0.0))
