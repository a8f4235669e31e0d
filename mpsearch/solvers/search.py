"""Black-box search with Optuna: TPE under the budgets, and NSGA-II for the whole front.

For layer-wise tables (up to a few hundred items). Each trial picks one width
per item (tied items share one parameter). The objective is the cost table's
prediction (fast) or a user callback ``evaluate(bits) -> float`` that measures
the real model, where ``bits`` maps item names to widths.

- ``TPESolver`` minimizes the objective; budgets go to Optuna's
  ``constraints_func`` (each budget's ``usage / limit - 1``, feasible when
  <= 0), and the greedy baseline's plan is enqueued first so a feasible trial
  always exists. The answer is the best feasible trial of the study.
- ``NSGA2Solver`` (the genetic search) minimizes the objective and every
  budget's resource at once. ``solve`` returns the best feasible trial;
  ``front`` returns a :class:`~mpsearch.solvers.pareto.ParetoFront`. Its first
  generation is seeded with the uniform plans and plans spread along the
  greedy descent (widest to narrowest); they count as evaluations.

``storage`` lets several processes share one study: ``None`` keeps it in
memory, a file path means a SQLite file (``runs/study.db``), and any URL is
passed to Optuna (``postgresql://user@host/db`` for a cluster). Workers
sharing a study must use the same ``study_name`` and the same table.
Samplers are seeded; with one process and in-memory storage a seed gives the
same plan every time.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import ConfigError
from mpsearch.solvers.base import RTOL, SOLVERS, Reduced, Solver, SolveResult, Status, check_ceiling, reduce
from mpsearch.solvers.greedy import GreedySolver, descent_path


@functools.cache
def _new_constraints() -> bool:
    """Optuna >= 5 takes constraints from ``trial.set_constraint``; older ones from ``constraints_func``."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


def storage_url(storage: str | os.PathLike[str] | None) -> str | None:
    """``None`` (in memory), a URL as given, or ``sqlite:///`` plus the absolute path of a file."""
    if storage is None:
        return None
    text = os.fspath(storage)
    return text if "://" in text else f"sqlite:///{Path(text).resolve()}"


def _storage(storage: str | os.PathLike[str] | None):
    """An Optuna storage; several processes starting together may race to create the schema, so retry."""
    import time

    import optuna

    url = storage_url(storage)
    if url is None:
        return None
    # SQLite: wait for the file lock instead of failing at once
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
        except Exception:  # another process is creating the same tables (IntegrityError, ...)
            time.sleep(0.3 * (attempt + 1))
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


class _OptunaSearch(Solver):
    exact = False
    requires = ("optuna",)

    def __init__(
        self,
        *,
        n_trials: int = 300,
        seed: int = 0,
        storage: str | os.PathLike[str] | None = None,
        study_name: str | None = None,
        evaluate: Callable[[Mapping[str, int]], float] | None = None,
    ) -> None:
        if not isinstance(n_trials, int) or n_trials < 1:
            raise ConfigError(f"`n_trials` must be a positive integer, but got n_trials={n_trials!r}. Pass e.g. n_trials=300.")
        if evaluate is not None and not callable(evaluate):
            raise ConfigError(f"`evaluate` must be a callable bits -> float, but got {evaluate!r}.")
        self.n_trials = n_trials
        self.seed = seed
        self.storage = storage
        self.study_name = study_name
        self.evaluate = evaluate

    # ---- the search space -------------------------------------------------------
    def _setup(self, costs: CostTable, budgets: tuple[Budget, ...]):
        red = reduce(costs, budgets)
        names = [f"{costs.items[g[0]]}" for g in red.members]
        options = [[int(j) for j in np.flatnonzero(red.allowed[r])] for r in range(len(names))]
        return red, names, options

    def _value(self, costs: CostTable, red: Reduced, choice_r: np.ndarray) -> float:
        choice = red.expand(choice_r, costs.n_items)
        if self.evaluate is None:
            return costs.objective(choice)
        bits = {str(n): costs.bits[int(c)] for n, c in zip(costs.items, choice)}
        return float(self.evaluate(bits))

    def _run(self, costs, budgets, sampler, directions, objective_parts, time_limit, enqueue):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        red, names, options = self._setup(costs, budgets)
        study = optuna.create_study(
            storage=_storage(self.storage), study_name=self.study_name, sampler=sampler,
            directions=directions, load_if_exists=self.study_name is not None,
        )
        for choice_r in enqueue(red):
            study.enqueue_trial({n: int(c) for n, c in zip(names, choice_r)}, skip_if_exists=True)
        rows = np.arange(len(names))

        def objective(trial):
            choice_r = np.array([trial.suggest_categorical(n, o) for n, o in zip(names, options)], np.int64)
            used = [float(m[rows, choice_r].sum()) for m in red.matrices]
            constraints = [u / lim - (1 + RTOL) for u, lim in zip(used, red.limits)]
            trial.set_user_attr("constraints", constraints)
            if _new_constraints():  # Optuna >= 5; older ones read the user attribute via constraints_func
                for k, value in enumerate(constraints):
                    trial.set_constraint(f"budget_{k}", value)
            value = self._value(costs, red, choice_r)
            return objective_parts(value, used)

        study.optimize(objective, n_trials=self.n_trials, timeout=time_limit, gc_after_trial=False)
        return study, red, names

    def _constraints_func(self, constrained: bool = True):
        return None if _new_constraints() or not constrained else self._constraints

    @staticmethod
    def _constraints(trial) -> list[float]:
        return list(trial.user_attrs.get("constraints", [1.0]))

    def _best(self, costs, budgets, study, red, names, value_index: int = 0, started: float | None = None,
              time_limit: float | None = None) -> SolveResult:
        """The best feasible trial; status time_limit when the search was cut short by ``time_limit``."""
        import optuna

        best, best_value = None, np.inf
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            if all(c <= 0 for c in self._constraints(t)) and all(n in t.params for n in names):
                value = t.values[value_index]
                if value < best_value:
                    best, best_value = t, value
        info = {"trials": len(study.trials), "study_name": study.study_name}
        if best is None:
            return SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budgets, info=info)
        choice = red.expand(np.array([best.params[n] for n in names], np.int64), costs.n_items)
        info["measured"] = best_value if self.evaluate is not None else None
        stopped = time_limit is not None and started is not None and time.perf_counter() - started >= time_limit
        status = Status.TIME_LIMIT if stopped else Status.FEASIBLE
        return SolveResult(status=status, costs=costs, budgets=budgets, choice=choice, info=info)


def _greedy_start(costs: CostTable, budgets: tuple[Budget, ...]):
    def enqueue(red: Reduced) -> list[np.ndarray]:
        result = GreedySolver()._solve(costs, budgets, time_limit=None)
        if result.choice is None:
            return []
        return [result.choice[[g[0] for g in red.members]]]

    return enqueue


@SOLVERS.register("tpe")
class TPESolver(_OptunaSearch):
    """Optuna TPE under the budgets (Optuna's constraints), seeded, optionally shared through storage.

    >>> from mpsearch.solvers import TPESolver
    >>> TPESolver(n_trials=50, seed=1, storage=None).n_trials
    50
    """

    name = "tpe"
    multi_objective = False

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        import optuna

        sampler = optuna.samplers.TPESampler(seed=self.seed, constraints_func=self._constraints_func(), n_startup_trials=10)
        started = time.perf_counter()
        study, red, names = self._run(costs, budgets, sampler, ["minimize"], lambda v, u: v, time_limit, _greedy_start(costs, budgets))
        return self._best(costs, budgets, study, red, names, started=started, time_limit=time_limit)


@SOLVERS.register("nsga2")
class NSGA2Solver(_OptunaSearch):
    """NSGA-II (Optuna's genetic sampler) over predicted cost and every budget's resource.

    >>> from mpsearch.solvers import NSGA2Solver
    >>> NSGA2Solver(n_trials=2000, population_size=50).multi_objective
    True
    """

    name = "nsga2"
    multi_objective = True

    def __init__(self, *, population_size: int = 50, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(population_size, int) or population_size < 2:
            raise ConfigError(f"`population_size` must be an integer >= 2, but got {population_size!r}.")
        self.population_size = population_size

    def _sampler(self, constrained: bool):
        import optuna

        return optuna.samplers.NSGAIISampler(
            seed=self.seed, population_size=self.population_size,
            constraints_func=self._constraints_func(constrained),
        )

    def _uniform_starts(self, red: Reduced) -> list[np.ndarray]:
        starts = []
        for col in range(red.allowed.shape[1]):
            near = np.argmin(np.where(red.allowed, np.abs(np.arange(red.allowed.shape[1]) - col), 99), axis=1)
            starts.append(near.astype(np.int64))
        return starts

    def _front_starts(self, red: Reduced) -> list[np.ndarray]:
        """The first generation: uniform plans and evenly spaced plans of the greedy descent."""
        path = descent_path(np.where(red.allowed, red.cost, np.inf), red.matrices[0], red.allowed)
        picks = np.unique(np.linspace(0, len(path) - 1, max(self.population_size - red.allowed.shape[1], 2)).round().astype(int))
        return self._uniform_starts(red) + [path[k] for k in picks]

    def _solve(self, costs: CostTable, budgets: tuple[Budget, ...], *, time_limit: float | None) -> SolveResult:
        greedy = _greedy_start(costs, budgets)
        started = time.perf_counter()
        study, red, names = self._run(
            costs, budgets, self._sampler(True), ["minimize"] * (1 + len(budgets)), lambda v, u: (v, *u),
            time_limit, lambda red: greedy(red) + self._uniform_starts(red),
        )
        return self._best(costs, budgets, study, red, names, started=started, time_limit=time_limit)

    def front(self, costs: CostTable, budgets=None, *, kind: str = "avg_bits", time_limit: float | None = None):
        """Search cost vs ``kind`` without a limit; one result per budget value (or every non-dominated trial).

        >>> # NSGA2Solver(n_trials=2000).front(costs, kind="avg_bits").to_frame()
        """
        start = time.perf_counter()
        check_ceiling(costs, budgets, kind=kind)  # before the search, not after it
        probe = (Budget(kind=kind, value=float("1e300")),)
        study, red, names = self._run(
            costs, probe, self._sampler(False), ["minimize", "minimize"], lambda v, u: (v, u[0]), time_limit,
            self._front_starts,
        )
        return _front_of(study, costs, red, names, budgets, kind, self.name, start, self.evaluate is not None)


def _front_of(study, costs, red, names, budgets, kind, solver, start, measured):
    from mpsearch.solvers.pareto import ParetoFront

    probe = Budget(kind=kind, value=float("1e300"))
    trials = [t for t in study.get_trials(deepcopy=False) if t.values is not None and all(n in t.params for n in names)]
    plans = [(red.expand(np.array([t.params[n] for n in names], np.int64), costs.n_items), t.values[0]) for t in trials]
    usage = [float(costs.usage(c, probe)) for c, _ in plans]
    values = budgets if budgets is not None else sorted(set(usage))
    results = []
    for v in values:
        budget = (v if isinstance(v, Budget) else Budget(kind=kind, value=float(v)),)
        fits = [(val, k) for k, ((c, val), u) in enumerate(zip(plans, usage)) if u <= budget[0].value * (1 + RTOL)]
        if not fits:
            results.append(SolveResult(status=Status.INFEASIBLE, costs=costs, budgets=budget, solver=solver,
                                       min_feasible={kind: costs.min_usage(budget[0])}))
            continue
        val, k = min(fits)
        choice = plans[k][0]
        results.append(SolveResult(status=Status.FEASIBLE, costs=costs, budgets=budget, choice=choice,
                                   objective=costs.objective(choice), seconds=time.perf_counter() - start,
                                   solver=solver, info={"measured": val if measured else None}))
    return ParetoFront(costs=costs, results=results, kind=kind)


def load_front(costs: CostTable, storage: str | os.PathLike[str], study_name: str, *, kind: str = "avg_bits", budgets=None):
    """The front of a study that workers built with ``NSGA2Solver(storage=..., study_name=...).front``.

    >>> # load_front(costs, "runs/study.db", "resnet20").to_frame()
    """
    import optuna

    check_ceiling(costs, budgets, kind=kind)  # before reading the study
    start = time.perf_counter()
    study = optuna.load_study(study_name=study_name, storage=_storage(storage))
    red = reduce(costs, (Budget(kind=kind, value=1.0),))
    names = [f"{costs.items[g[0]]}" for g in red.members]
    return _front_of(study, costs, red, names, budgets, kind, "nsga2", start, False)
