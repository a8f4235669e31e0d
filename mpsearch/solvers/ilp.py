"""The exact solver: an integer linear program whose optimality is checked, not assumed.

One binary per item and allowed bit choice, exactly one choice per item, one linear row per
budget, minimize the summed predicted cost; tied items share one set of variables. The steps:

1. other solvers propose plans (:mod:`~mpsearch.solvers._certify`); the best is the reference;
2. exact reductions drop choices no optimal plan needs, and each item's cost above its least
   is measured in tenths of the reference's cost (:mod:`~mpsearch.solvers._reduce`), so the
   backend's absolute tolerances mean the same whatever the scale of the sensitivities;
3. HiGHS (highspy) solves it with zero gap and 1e-9 tolerances; CBC (PuLP) is the fallback
   when highspy is missing or fails (:mod:`~mpsearch.solvers._backends`);
4. the plan is re-checked against every budget in float64 (re-solved with a tightened row if
   the backend's tolerance let it overshoot) and improved by an exchange search; the best plan
   of all is returned.

Status ``optimal`` means certified: the returned plan's objective, recomputed from the table,
is within 1e-9 (relative) of the lower bound the backend proved (less its tolerance), and no
plan found by any check beats that bound; the proven bound is ``info["proven_bound"]``.
A backend claim that a found plan contradicts is not repeated: the best plan comes back as
``feasible`` (or ``time_limit``) with a float64 Lagrangian bound. Without another solver's
plan, a second pass normalizes by the first pass's plan.
"""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import MPSearchError, SolverError
from mpsearch.solvers._backends import TOL, Outcome, solve_cbc, solve_highs
from mpsearch.solvers._certify import exchange, heuristic_plans, lagrangian_bound
from mpsearch.solvers._reduce import excess, meets, program, reductions
from mpsearch.solvers.base import SOLVERS, Reduced, Solver, SolveResult, Status, reduce, within

OPT_RTOL = 1e-9  # a plan within this relative distance of the proven bound is reported optimal
RHS_MARGINS = (0.0, 4 * TOL, 1e-7, 1e-5)  # budget rows tightened by these when a plan overshoots


@SOLVERS.register("ilp")
class ILPSolver(Solver):
    """Exact integer program (HiGHS by default, CBC as the fallback), its optimality certified.

    >>> from mpsearch.solvers import ILPSolver
    >>> ILPSolver(backend="cbc").exact
    True
    """

    name = "ilp"
    exact = True
    requires = ("highspy", "pulp")  # either backend is enough

    def __init__(self, *, backend: str = "auto", gap: float = 0.0, threads: int = 1, seed: int = 0) -> None:
        if backend not in ("auto", "cbc", "highs"):
            raise MPSearchError(f"`backend` must be 'auto', 'cbc' or 'highs', but got {backend!r}.")
        if not 0.0 <= gap < 1.0:
            raise MPSearchError(f"`gap` must be within [0, 1), but got gap={gap!r}.")
        self.backend = backend
        self.gap = gap
        self.threads = threads
        self.seed = seed

    @classmethod
    def is_available(cls) -> bool:
        return any(importlib.util.find_spec(mod) is not None for mod in cls.requires)

    def _backends(self) -> list[str]:
        has_highs = importlib.util.find_spec("highspy") is not None
        if self.backend == "highs" and not has_highs:
            raise MPSearchError("backend 'highs' needs the highspy package. pip install highspy, or use backend='cbc'.")
        if self.backend == "cbc" or not has_highs:
            return ["cbc"]
        return ["highs"] if self.backend == "highs" else ["highs", "cbc"]

    def _run(self, prog, rhs: float, deadline: float | None, start: np.ndarray | None, info: dict) -> Outcome:
        """One solve of the program, falling back from HiGHS to CBC (``auto``) when HiGHS fails."""
        outcome = Outcome("error", "none")
        for name in self._backends():
            left = None if deadline is None else max(deadline - time.perf_counter(), 1e-3)
            if name == "highs":
                try:
                    outcome = solve_highs(prog, rhs=rhs, time_limit=left, gap=self.gap, threads=self.threads,
                                          seed=self.seed, start=start)
                except Exception as err:  # any HiGHS failure hands over to CBC
                    outcome = Outcome("error", "highs", info={"message": f"{type(err).__name__}: {err}"})
            else:
                outcome = solve_cbc(prog, rhs=rhs, time_limit=left, gap=self.gap, threads=self.threads)
            if outcome.status != "error":
                return outcome
            info.setdefault("backend_errors", []).append({"backend": name, **outcome.info})
        return outcome

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        deadline = None if time_limit is None else time.perf_counter() + time_limit
        red = reduce(costs, budgets)
        plans = heuristic_plans(costs, budgets, red)
        info: dict = {"backend": self._backends()[0], "checked_by": [name for name, _ in plans]}

        def result(status: Status, choice: np.ndarray | None = None, bound: float | None = None) -> SolveResult:
            full = None if choice is None else red.expand(choice, costs.n_items)
            return SolveResult(status=status, costs=costs, budgets=budgets, choice=full, bound=bound, info=info)

        reference = _best(costs, budgets, red, plans)
        for attempt in range(2):  # a second pass normalizes by the first pass's plan when no other solver had one
            keep, ref = reductions(red, None if reference is None else reference[1])
            if keep is None:  # the reductions alone prove that no plan meets the budgets together
                info["certificate"] = "no choice of some item fits the budgets"
                return result(Status.INFEASIBLE)
            info["choices_left"] = int(keep.sum())
            if ref is not None and excess(red, keep, ref) == 0.0:
                info["certificate"] = "every item at its least-cost choice left"
                info["plan_from"] = reference[0]
                return result(Status.OPTIMAL, ref, costs.objective(red.expand(ref, costs.n_items)))
            prog = program(red, keep, _scale(costs, red, keep, ref))
            info["variables"] = len(prog.rows)
            outcome, choice = self._milp(prog, red, ref, deadline, info)
            # the bound of the untightened program, less the backend's pruning tolerance, bounds the optimum
            claim = None if outcome.bound is None else prog.cost(outcome.bound - 2 * TOL)
            if outcome.status == "error" and not plans:
                raise SolverError(f"the ILP backends failed ({info.get('backend_errors')}) and no other solver found a "
                                  "plan. Try backend='cbc', a longer time limit, or solver='greedy'.")
            found = ([(outcome.backend, choice)] if choice is not None else []) + plans
            found += [("exchange", exchange(red, c)) for _, c in found[:2]]
            best = _best(costs, budgets, red, found)
            if best is None:
                if outcome.status == "infeasible":
                    return result(Status.INFEASIBLE)
                return result(Status.TIME_LIMIT, None, lagrangian_bound(prog))
            info["plan_from"] = best[0]
            objective = costs.objective(red.expand(best[1], costs.n_items))
            tol = OPT_RTOL * objective  # costs are non-negative
            if outcome.status == "infeasible" or (claim is not None and objective < claim - tol):
                info["refuted"] = f"the {outcome.backend} claim ({outcome.status}) is beaten by the plan of {best[0]}"
                claim = None
            if claim is not None and objective - claim <= tol:
                # optimal means "within OPT_RTOL": the bound reported is the objective (gap 0), the proven one is kept
                info.update(certificate=f"{outcome.backend} bound within {OPT_RTOL:g} of the plan", proven_bound=claim)
                return result(Status.OPTIMAL, best[1], objective)
            improved = reference is None or objective < costs.objective(red.expand(reference[1], costs.n_items))
            if attempt or outcome.status == "time_limit" or not improved:
                break
            reference = best
        bound = lagrangian_bound(prog)
        if claim is not None:
            bound = claim if bound is None else max(bound, claim)
        bound = None if bound is None else min(bound, objective)
        return result(Status.TIME_LIMIT if outcome.status == "time_limit" else Status.FEASIBLE, best[1], bound)

    def _milp(self, prog, red: Reduced, ref: np.ndarray | None, deadline: float | None,
              info: dict) -> tuple[Outcome, np.ndarray | None]:
        """The backend's outcome on the program, re-solved with tightened rows while its plan overshoots a budget.

        The outcome's bound is that of the untightened program; the plan is None unless it meets the budgets.
        """
        if len(prog.rows) == 0:  # the reductions fixed every item: one plan left
            fits = meets(red, prog.fixed)
            return Outcome("optimal" if fits else "infeasible", "reductions", prog.fixed if fits else None,
                           2 * TOL if fits else None), prog.fixed if fits else None
        first = outcome = self._run(prog, 1.0, deadline, ref, info)
        for margin in RHS_MARGINS[1:]:
            if outcome.choice is None or meets(red, outcome.choice):
                break
            outcome = self._run(prog, 1.0 - margin, deadline, ref, info)
        info.update(backend=outcome.backend, **outcome.info)
        choice = outcome.choice if outcome.choice is not None and meets(red, outcome.choice) else None
        status = first.status if outcome.status == "optimal" else outcome.status
        return Outcome(status, outcome.backend, choice, first.bound, outcome.info), choice


def _best(costs: CostTable, budgets: tuple[Budget, ...], red: Reduced,
          plans: list[tuple[str, np.ndarray]]) -> tuple[str, np.ndarray] | None:
    """The cheapest plan that meets the budgets (the first of equals), by the table's own objective."""
    best, value = None, math.inf
    for name, choice in plans:
        full = red.expand(choice, costs.n_items)
        if not within(costs, full, budgets):
            continue
        v = costs.objective(full)
        if v < value:
            best, value = (name, choice), v
    return best


def _scale(costs: CostTable, red: Reduced, keep: np.ndarray, ref: np.ndarray | None) -> float:
    """The objective unit: a tenth of the reference plan's cost, so that the backend's absolute pruning
    tolerance (1e-9 of the unit) is 1e-10 of the objective. Costs are non-negative (CostTable checks),
    so a reference with a positive excess costs more than 0. Without a reference: the largest excess."""
    if ref is not None:
        return 0.1 * costs.objective(red.expand(ref, costs.n_items))
    cost = np.where(keep, red.cost, np.nan)
    spread = np.nanmax(cost, axis=1) - np.nanmin(cost, axis=1)
    return float(spread.max()) or 1.0
