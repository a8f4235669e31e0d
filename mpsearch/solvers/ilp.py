"""The exact solver: an integer linear program in PuLP.

One binary x[i, c] per item and allowed bit choice, exactly one choice per
item, one linear constraint per budget, minimize the summed predicted cost.
Tied items share one set of variables. CBC (bundled with PuLP) is the default
backend; HiGHS is used when ``backend="highs"`` or ``"auto"`` finds it.

With a time limit, the best plan found so far comes back with status
``time_limit`` and a gap against the LP-relaxation bound.
"""

from __future__ import annotations

import warnings

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import MPSearchError, SolverError
from mpsearch.solvers.base import RTOL, SOLVERS, Reduced, Solver, SolveResult, Status, reduce, within


def lp_bound(red: Reduced) -> float | None:
    """The LP-relaxation optimum: a lower bound on every integer plan's cost."""
    from scipy.optimize import linprog

    rows, cols = np.nonzero(red.allowed)
    n_var = len(rows)
    n_items = red.cost.shape[0]
    eq = np.zeros((n_items, n_var))
    eq[rows, np.arange(n_var)] = 1.0
    ub = np.array([m[rows, cols] for m in red.matrices]) if red.matrices else None
    limits = np.array([v * (1 + RTOL) for v in red.limits]) if red.matrices else None
    res = linprog(
        red.cost[rows, cols], A_ub=ub, b_ub=limits, A_eq=eq, b_eq=np.ones(n_items),
        bounds=(0, 1), method="highs",
    )
    return float(res.fun) if res.status == 0 else None


@SOLVERS.register("ilp")
class ILPSolver(Solver):
    """Exact integer program (PuLP; CBC by default, HiGHS when installed).

    >>> from mpsearch.solvers import ILPSolver
    >>> ILPSolver(backend="cbc").exact
    True
    """

    name = "ilp"
    exact = True
    requires = ("pulp",)

    def __init__(self, *, backend: str = "auto", gap: float = 0.0, threads: int = 1, seed: int = 0) -> None:
        if backend not in ("auto", "cbc", "highs"):
            raise MPSearchError(f"`backend` must be 'auto', 'cbc' or 'highs', but got {backend!r}.")
        if not 0.0 <= gap < 1.0:
            raise MPSearchError(f"`gap` must be within [0, 1), but got gap={gap!r}.")
        self.backend = backend
        self.gap = gap
        self.threads = threads
        self.seed = seed  # the ILP is deterministic; kept for the common solver signature

    def _backend(self, time_limit: float | None, preprocess: bool = False):
        import pulp

        kwargs = dict(msg=False, timeLimit=time_limit, gapRel=self.gap if self.gap > 0 else None)
        if self.backend in ("auto", "highs"):
            highs = pulp.HiGHS(**kwargs) if hasattr(pulp, "HiGHS") else None
            if highs is not None and highs.available():
                return highs, "highs"
            if self.backend == "highs":
                raise MPSearchError("backend 'highs' needs the highspy package. pip install highspy, or use backend='cbc'.")
        with warnings.catch_warnings():  # PuLP 3.3 warns that 4.0 unbundles CBC; we pin pulp < 4
            warnings.simplefilter("ignore", DeprecationWarning)
            # CBC 2.10's integer preprocessing can fix variables wrongly when a
            # plan's usage sits within ~1e-6 of the budget and then report a worse
            # plan as optimal; these problems are small, so it is switched off.
            options = [] if preprocess else ["preprocess off"]
            return pulp.PULP_CBC_CMD(threads=self.threads, options=options, **kwargs), "cbc"

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        red = reduce(costs, budgets)
        # CBC accepts a constraint violated by up to its feasibility tolerance
        # (~1e-6). Budget rows are normalized to a right-hand side of 1 and, if
        # the plan still overshoots in exact arithmetic, re-solved with the
        # right-hand side tightened by a few tolerances.
        for margin in (0.0, 2e-6, 1e-5, 1e-4):
            result = self._solve_once(costs, budgets, red, time_limit, 1.0 + RTOL - margin)
            if result.choice is None or within(costs, result.choice, budgets):
                return result
        raise SolverError("the ILP backend kept returning plans over budget; try backend='cbc' or report a bug.")

    def _solve_once(self, costs, budgets, red: Reduced, time_limit: float | None, rhs: float) -> SolveResult:
        import pulp

        prob = pulp.LpProblem("mpsearch_bit_allocation", pulp.LpMinimize)
        rows, cols = np.nonzero(red.allowed)
        make = getattr(prob, "add_variable", None)  # PuLP >= 3.3; LpVariable before
        if make is None:
            x = [pulp.LpVariable(f"x_{r}_{c}", cat=pulp.LpBinary) for r, c in zip(rows, cols)]
        else:
            x = [make(f"x_{r}_{c}", 0, 1, pulp.LpBinary) for r, c in zip(rows, cols)]
        # Normalize the objective so CBC's absolute tolerances behave the same
        # whatever the scale of the sensitivities.
        scale = float(np.abs(red.cost[red.allowed]).max()) or 1.0
        prob += pulp.lpSum(float(red.cost[r, c]) / scale * v for r, c, v in zip(rows, cols, x))
        by_item: dict[int, list] = {}
        for r, v in zip(rows, x):
            by_item.setdefault(int(r), []).append(v)
        for r, vs in by_item.items():
            prob += pulp.lpSum(vs) == 1, f"one_choice_{r}"
        for k, (mat, limit) in enumerate(zip(red.matrices, red.limits)):
            prob += pulp.lpSum(float(mat[r, c]) / limit * v for r, c, v in zip(rows, cols, x)) <= rhs, f"budget_{k}"
        backend, backend_name = self._backend(time_limit)
        try:
            prob.solve(backend)
        except pulp.PulpSolverError:
            # CBC without preprocessing aborts on some infeasible models; with its
            # defaults it reports them properly (any plan it returns is re-checked).
            backend, backend_name = self._backend(time_limit, preprocess=True)
            try:
                prob.solve(backend)
            except pulp.PulpSolverError as err:
                raise SolverError(f"the ILP backend {backend_name} failed: {err}. Try backend='highs' or a longer time limit.") from None
        status = pulp.LpStatus[prob.status]
        info = {"backend": backend_name, "variables": len(x), "pulp_status": status}
        if status == "Infeasible" or prob.sol_status == pulp.LpSolutionInfeasible:
            return SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budgets, info=info)
        if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            # stopped before the first integer plan: the values are not a plan
            return SolveResult(status=Status.TIME_LIMIT, costs=costs, budgets=budgets, bound=lp_bound(red), info=info)
        values = np.array([v.value() if v.value() is not None else 0.0 for v in x])
        choice_r = np.full(red.cost.shape[0], -1, np.int64)
        picked = values > 0.5
        choice_r[rows[picked]] = cols[picked]
        if (choice_r < 0).any() or np.bincount(rows[picked], minlength=len(choice_r)).max() > 1:
            return SolveResult(status=Status.TIME_LIMIT, costs=costs, budgets=budgets, bound=lp_bound(red), info=info)
        choice = red.expand(choice_r, costs.n_items)
        if prob.sol_status == pulp.LpSolutionIntegerFeasible or status != "Optimal":
            return SolveResult(
                status=Status.TIME_LIMIT, costs=costs, budgets=budgets, choice=choice, bound=lp_bound(red), info=info
            )
        if self.gap > 0:  # optimal only within the requested relative gap
            return SolveResult(status=Status.FEASIBLE, costs=costs, budgets=budgets, choice=choice, bound=lp_bound(red), info=info)
        return SolveResult(status=Status.OPTIMAL, costs=costs, budgets=budgets, choice=choice, bound=costs.objective(choice), info=info)
