"""Search studies: every estimator x solver x budget, evaluated, in one resumable table.

A :class:`Study` owns the loop; estimators only score and solvers only solve.
Each estimator's cost table is saved once (``costs/<estimator>.json``) and
reloaded on the next run; each finished row is appended to ``results.csv``
(rewritten atomically), so a study interrupted part-way resumes where it
stopped without recomputing what it had finished. Identical plans are
evaluated once.

>>> # study = Study(model=model, calibration=calib, space=space, metric=top1,
>>> #               estimators=["hessian"], solvers=["ilp", "greedy"], budgets=[3, 4],
>>> #               out_dir="study-out")
>>> # frame = study.run(); study.plot("study-out/study.png")
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import MPSearchError
from mpsearch.core.io import atomic_write_text
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.pricing.tables import build_cost_table
from mpsearch.sensitivity.base import Estimator, get_estimator
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.solvers.base import Solver, get_solver
from mpsearch.space.discover import SearchSpace

COLUMNS = [
    "estimator", "solver", "budget_kind", "budget", "status", "avg_bits", "bytes", "mib", "predicted_cost",
    "metric", "seconds_estimate", "seconds_solve", "seconds_evaluate", "plan_file",
]


def _name(obj: Any) -> str:
    return obj if isinstance(obj, str) else getattr(obj, "name", type(obj).__name__)


class Study:
    """Run estimators x solvers x budgets on one model and collect one DataFrame.

    Plans can quantize activations (``activation_bits`` with calibrated ``activation_ranges``)
    and carry bias corrections measured on ``bias_correction`` batches
    (:mod:`mpsearch.deploy.bias_correction`); either way the saved plan reproduces the evaluated model.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        calibration: Calibration,
        space: SearchSpace,
        metric: Callable[[nn.Module], float],
        estimators: Sequence[str | Estimator] = ("hessian",),
        solvers: Sequence[str | Solver] = ("ilp",),
        budgets: Sequence[float | Budget] = (3.0,),
        uniform: Sequence[int] = (),
        out_dir: str | Path = "study-out",
        metric_name: str = "metric",
        progress: bool = True,
        activation_bits: int | None = None,
        activation_ranges: dict[str, tuple[float, float]] | None = None,
        bias_correction: Sequence[Any] | None = None,
    ) -> None:
        if not estimators or not solvers or not (budgets or uniform):
            raise MPSearchError("a study needs at least one estimator, one solver, and a budget or a uniform width.")
        self.model, self.calibration, self.space, self.metric = model, calibration, space, metric
        self.estimators = list(estimators)
        self.solvers = list(solvers)
        self.budgets = [b if isinstance(b, Budget) else Budget.avg_bits(b) for b in budgets]
        self.uniform = list(uniform)
        self.out = Path(out_dir)
        self.metric_name = metric_name
        self.progress = progress
        if activation_bits is not None and not activation_ranges:
            raise MPSearchError(
                "activation bits need calibrated ranges, but none were given. "
                "Pass activation_ranges=calibrate_ranges(model, batches, space.names)."
            )
        self.activation_bits = activation_bits
        self.activation_ranges = dict(activation_ranges or {})
        self.bias_correction = None if bias_correction is None else list(bias_correction)
        self._metric_cache: dict[str, float] = {}
        self._correction_cache: dict[str, dict[str, list[float]]] = {}

    # ---- persistence ------------------------------------------------------
    @property
    def results_path(self) -> Path:
        return self.out / "results.csv"

    def load(self):
        """The rows finished so far (an empty frame when none)."""
        import pandas as pd

        if not self.results_path.is_file():
            return pd.DataFrame(columns=COLUMNS)
        try:
            frame = pd.read_csv(self.results_path)
        except Exception as err:  # pandas raises several unrelated types on bad files
            raise MPSearchError(
                f"a study's results.csv must be readable CSV, but {self.results_path} is not ({err}). "
                "Move it away to start the study afresh."
            ) from None
        missing = set(COLUMNS) - set(frame.columns)
        if missing:
            raise MPSearchError(f"{self.results_path} lacks columns {sorted(missing)}; it is not a study's results file.")
        return frame

    @staticmethod
    def _key(estimator: str, solver: str, kind: str, value: float) -> str:
        return f"{estimator}|{solver}|{kind}|{float(value):.10g}"

    def _costs(self, estimator: str | Estimator) -> tuple[CostTable, float]:
        path = self.out / "costs" / f"{_name(estimator)}.json"
        if path.is_file():
            try:
                table = CostTable.load(path)
                return table, float(table.meta.get("estimator_seconds", 0.0))
            except MPSearchError:
                pass  # a damaged cost table is recomputed
        start = time.perf_counter()
        est = get_estimator(estimator, progress=self.progress) if isinstance(estimator, str) else estimator
        sens = est.estimate(self.model, self.calibration, self.space)
        table = build_cost_table(self.model, self.space, sens)
        table.save(path)
        return table, time.perf_counter() - start

    @staticmethod
    def _content(plan) -> str:
        """What the measured model depends on: widths, quantizer, activations, corrections; not who found the plan."""
        content = {k: v for k, v in plan.to_dict().items() if k != "meta"}
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()

    def _corrected(self, plan):
        """``plan`` with the bias corrections measured on the study's batches (once per distinct plan)."""
        from mpsearch.deploy.bias_correction import measure_bias_correction

        key = self._content(plan)
        if key not in self._correction_cache:
            self._correction_cache[key] = measure_bias_correction(self.model, plan, self.bias_correction)
        return plan.with_bias_correction(self._correction_cache[key])

    def _evaluate(self, plan) -> tuple[float, float]:
        # plans that differ only in metadata (solver, estimator) are evaluated once
        digest = self._content(plan)
        if digest in self._metric_cache:
            return self._metric_cache[digest], 0.0
        start = time.perf_counter()
        batches = self.calibration.batches if plan.quantizer.method == "gptq" else None
        value = float(self.metric(fake_quantize_model(self.model, plan, batches=batches)))
        self._metric_cache[digest] = value
        return value, time.perf_counter() - start

    # ---- the loop -----------------------------------------------------------
    def jobs(self) -> list[tuple[str | Estimator, str | Solver | None, Budget | int]]:
        out: list[tuple[Any, Any, Any]] = [(self.estimators[0], None, b) for b in self.uniform]
        out += [(e, s, b) for e in self.estimators for s in self.solvers for b in self.budgets]
        return out

    def run(self):
        """Run every combination not finished yet; return the whole table (also in results.csv)."""
        import pandas as pd
        from tqdm.auto import tqdm

        frame = self.load()
        done = {self._key(r.estimator, r.solver, r.budget_kind, r.budget) for r in frame.itertuples()}
        rows = frame.to_dict("records")
        for estimator, solver, budget in tqdm(self.jobs(), desc="study", disable=not self.progress):
            if solver is None:
                key = self._key("uniform", f"W{budget}", "uniform_bits", budget)
            else:
                key = self._key(_name(estimator), _name(solver), budget.kind, budget.value)
            if key in done:
                continue
            costs, t_est = self._costs(estimator)
            row = self._row(costs, estimator, solver, budget, t_est)
            rows.append(row)
            done.add(key)
            atomic_write_text(self.results_path, pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
        return pd.DataFrame(rows, columns=COLUMNS)

    def _row(self, costs: CostTable, estimator, solver, budget, t_est: float) -> dict[str, Any]:
        if solver is None:
            choice = costs.uniform_choice(int(budget))
            plan = costs.plan(choice, solver="uniform")
            status, t_solve = "uniform", 0.0
            ident = dict(estimator="uniform", solver=f"W{budget}", budget_kind="uniform_bits", budget=float(budget))
        else:
            result = get_solver(solver).solve(costs, budget)
            ident = dict(estimator=_name(estimator), solver=_name(solver), budget_kind=budget.kind, budget=budget.value)
            status, t_solve, choice = result.status.value, result.seconds, result.choice
            plan = result.plan if choice is not None else None
        row: dict[str, Any] = {**ident, "status": status, "seconds_estimate": t_est, "seconds_solve": t_solve}
        if plan is None:
            missing = ("avg_bits", "bytes", "mib", "predicted_cost", "metric", "seconds_evaluate")
            return {**row, **{k: np.nan for k in missing}, "plan_file": ""}
        if self.activation_bits is not None:
            units = [n for n, b in plan.bits.items() if b != 16 and n in self.activation_ranges]
            plan = plan.with_activations({u: self.activation_bits for u in units}, {u: self.activation_ranges[u] for u in units})
        if self.bias_correction is not None:
            plan = self._corrected(plan)
        slug = "_".join(str(v) for v in ident.values()).replace("/", "-")
        plan_path = self.out / "plans" / f"{slug}.json"
        plan.save(plan_path)
        value, t_eval = self._evaluate(plan)
        return {
            **row, "avg_bits": costs.average_bits(choice), "bytes": costs.storage_bytes(choice),
            "mib": costs.storage_bytes(choice) / 2**20, "predicted_cost": costs.objective(choice),
            "metric": value, "seconds_evaluate": t_eval, "plan_file": str(plan_path.relative_to(self.out)),
        }

    def plot(self, path: str | Path | None = None, *, frame=None, reference: float | None = None, title: str = ""):
        """Metric against average bits and against MiB, one line per estimator x solver, uniform marked.

        Writes PNG or SVG by the suffix of ``path``; also an ``.svg`` twin next to a ``.png``.
        """
        from mpsearch.workflows.plots import plot_study

        frame = self.load() if frame is None else frame
        fig = plot_study(frame, metric_name=self.metric_name, reference=reference, title=title)
        if path is not None:
            from mpsearch.core.io import atomic_savefig

            atomic_savefig(fig, path, dpi=120)
            if str(path).endswith(".png"):
                atomic_savefig(fig, str(path)[:-4] + ".svg")
        return fig
