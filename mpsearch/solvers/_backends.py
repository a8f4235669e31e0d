"""The two MILP backends of :class:`~mpsearch.solvers.ilp.ILPSolver`: HiGHS (highspy) and CBC (PuLP).

Both solve one :class:`~mpsearch.solvers._reduce.Program`: a binary per free item and choice,
exactly one choice per item, one normalized row per budget (right-hand side ``rhs``, 1 unless a
plan came back over budget), minimize the normalized cost. Both run with zero optimality gap
and tolerances of 1e-9 on the normalized rows. Their answer is a claim: the plan is re-checked
and the bound cross-examined by the caller.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpsearch.solvers._reduce import Program

TOL = 1e-9  # feasibility and integrality tolerance of the normalized program


@dataclass(frozen=True)
class Outcome:
    """What a backend reported: ``status`` is optimal, infeasible, time_limit or error."""

    status: str
    backend: str
    choice: np.ndarray | None = None  # per merged item
    bound: float | None = None  # normalized lower bound the backend claims
    info: dict[str, Any] = field(default_factory=dict)


def _columns(prog: Program) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The constraint matrix column by column: item equality rows first, then budget rows."""
    n_var = len(prog.rows)
    free = np.flatnonzero(prog.fixed < 0)
    eq_row = np.empty(len(prog.fixed), np.int64)
    eq_row[free] = np.arange(len(free))
    idx = [eq_row[prog.rows][:, None]]
    val = [np.ones((n_var, 1))]
    for k, coef in enumerate(prog.budget_rows):
        idx.append(np.full((n_var, 1), len(free) + k))
        val.append(coef[:, None])
    idx, val = np.hstack(idx), np.hstack(val)
    nz = val != 0.0
    start = np.concatenate([[0], np.cumsum(nz.sum(axis=1))])
    return start.astype(np.int32), idx[nz].astype(np.int32), val[nz]


def solve_highs(prog: Program, *, rhs: float, time_limit: float | None, gap: float, threads: int, seed: int,
                start: np.ndarray | None) -> Outcome:
    """Solve with HiGHS through highspy's core class (the wrapper class prints a banner on stdout)."""
    import highspy

    n_var, n_free, n_budget = len(prog.rows), prog.n_free, len(prog.budget_rows)
    lp = highspy.HighsLp()
    lp.num_col_, lp.num_row_ = n_var, n_free + n_budget
    lp.col_cost_ = prog.obj.astype(np.float64)
    lp.col_lower_, lp.col_upper_ = np.zeros(n_var), np.ones(n_var)
    lp.row_lower_ = np.concatenate([np.ones(n_free), np.full(n_budget, -highspy.kHighsInf)])
    lp.row_upper_ = np.concatenate([np.ones(n_free), np.full(n_budget, rhs)])
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = _columns(prog)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * n_var
    h = getattr(highspy, "_Highs", highspy.Highs)()
    options = {
        "output_flag": False, "mip_rel_gap": gap, "mip_abs_gap": 0.0, "mip_feasibility_tolerance": TOL,
        "primal_feasibility_tolerance": TOL, "dual_feasibility_tolerance": TOL, "small_matrix_value": 1e-12,
        "random_seed": seed, "threads": threads,
    }
    if time_limit is not None:
        options["time_limit"] = max(float(time_limit), 1e-3)
    for key, value in options.items():
        h.setOptionValue(key, value)
    if h.passModel(lp) != highspy.HighsStatus.kOk:
        return Outcome("error", "highs", info={"message": "HiGHS rejected the model"})
    if start is not None:
        sol = highspy.HighsSolution()
        sol.col_value = prog.values(start)
        h.setSolution(sol)
    run = h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    found = info.primal_solution_status == 2  # a feasible integer plan
    choice = prog.choice(np.asarray(h.getSolution().col_value)) if found else None
    bound = float(info.mip_dual_bound) if np.isfinite(info.mip_dual_bound) else None
    details = {"milp_status": h.modelStatusToString(status), "nodes": int(info.mip_node_count)}
    S = highspy.HighsModelStatus
    if run == highspy.HighsStatus.kError or status in (S.kSolveError, S.kModelError, S.kLoadError, S.kNotset):
        return Outcome("error", "highs", info=details)
    if status == S.kInfeasible:
        return Outcome("infeasible", "highs", info=details)
    if status == S.kOptimal and choice is not None:
        return Outcome("optimal", "highs", choice, bound, details)
    if status in (S.kTimeLimit, S.kInterrupt, S.kIterationLimit, S.kSolutionLimit, S.kObjectiveBound,
                  S.kObjectiveTarget) or (status == S.kOptimal and choice is None):
        return Outcome("time_limit", "highs", choice, bound, details)
    return Outcome("error", "highs", info=details)


def solve_cbc(prog: Program, *, rhs: float, time_limit: float | None, gap: float, threads: int,
              msg: bool = False) -> Outcome:
    """Solve with CBC through PuLP; CBC reports no dual bound, so an optimal claim bounds at its objective."""
    import pulp

    lp = pulp.LpProblem("mpsearch_bit_allocation", pulp.LpMinimize)
    make = getattr(lp, "add_variable", None)  # PuLP >= 3.3; LpVariable before
    if make is None:
        x = [pulp.LpVariable(f"x_{r}_{c}", cat=pulp.LpBinary) for r, c in zip(prog.rows, prog.cols)]
    else:
        x = [make(f"x_{r}_{c}", 0, 1, pulp.LpBinary) for r, c in zip(prog.rows, prog.cols)]
    lp += pulp.lpSum(float(w) * v for w, v in zip(prog.obj, x))
    by_item: dict[int, list] = {}
    for r, v in zip(prog.rows, x):
        by_item.setdefault(int(r), []).append(v)
    for r, vs in by_item.items():
        lp += pulp.lpSum(vs) == 1, f"one_choice_{r}"
    for k, coef in enumerate(prog.budget_rows):
        lp += pulp.lpSum(float(a) * v for a, v in zip(coef, x) if a != 0.0) <= rhs, f"budget_{k}"
    # CBC 2.10's integer preprocessing fixed variables wrongly on near-tight budgets and then
    # reported a worse plan as optimal; these programs are small, so it stays off. Without it CBC
    # aborts on some infeasible models: those are retried with its defaults.
    for preprocess in (False, True):
        options = [f"integerTolerance {TOL}", f"primalTolerance {TOL}"] + ([] if preprocess else ["preprocess off"])
        with warnings.catch_warnings():  # PuLP 3.3 warns that 4.0 unbundles CBC; pulp < 4 is pinned
            warnings.simplefilter("ignore", DeprecationWarning)
            cmd = pulp.PULP_CBC_CMD(msg=msg, timeLimit=time_limit, gapRel=gap, gapAbs=0.0, threads=threads,
                                    options=options)
        try:
            lp.solve(cmd)
            break
        except pulp.PulpSolverError as err:
            if preprocess:
                return Outcome("error", "cbc", info={"message": str(err)})
    status = pulp.LpStatus[lp.status]
    details = {"milp_status": status}
    if status == "Infeasible" or lp.sol_status == pulp.LpSolutionInfeasible:
        return Outcome("infeasible", "cbc", info=details)
    if lp.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return Outcome("time_limit", "cbc", info=details)  # stopped before its first integer plan
    choice = prog.choice(np.array([v.value() if v.value() is not None else 0.0 for v in x]))
    if status == "Optimal" and lp.sol_status == pulp.LpSolutionOptimal and choice is not None:
        value = float(pulp.value(lp.objective) or 0.0)  # >= 0, as every normalized cost is
        return Outcome("optimal", "cbc", choice, value * (1.0 - gap), details)
    return Outcome("time_limit", "cbc", choice, None, details)
