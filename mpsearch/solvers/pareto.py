"""The Pareto front: the best plan at every budget, and which plans are worth keeping.

:func:`pareto` sweeps a budget, solves once per value, and keeps the plans that
no other plan beats on both resource and predicted cost. The front is a
pandas DataFrame and a matplotlib figure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import MPSearchError
from mpsearch.solvers.base import Solver, SolveResult, check_ceiling, get_solver


@dataclass(eq=False)
class ParetoFront:
    """All solves of a budget sweep, and the non-dominated subset."""

    costs: CostTable
    results: list[SolveResult]
    kind: str = "avg_bits"
    measured: dict[str, list[float | None]] = field(default_factory=dict)

    def _rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.results:
            row: dict[str, Any] = {
                "budget_kind": self.kind,
                "budget": r.budgets[0].value,
                "status": r.status.value,
                "solver": r.solver,
                "avg_bits": np.nan,
                "bytes": np.nan,
                "mib": np.nan,
                "predicted_cost": np.nan if r.objective is None else r.objective,
                "gap": np.nan if r.gap is None else r.gap,
                "seconds": r.seconds,
            }
            if r.choice is not None:
                row["avg_bits"] = self.costs.average_bits(r.choice)
                row["bytes"] = self.costs.storage_bytes(r.choice)
                row["mib"] = row["bytes"] / 2**20
                if self.kind not in ("avg_bits", "bytes"):
                    row[self.kind] = self.costs.usage(r.choice, r.budgets[0])
            rows.append(row)
        return rows

    def dominated(self) -> np.ndarray:
        """True for results that are infeasible, repeated, or beaten on both axes by another."""
        usage = np.array([np.inf if r.choice is None else r.costs.usage(r.choice, r.budgets[0]) for r in self.results])
        cost = np.array([np.inf if r.objective is None else r.objective for r in self.results])
        out = np.ones(len(self.results), bool)
        best = np.inf
        seen: set[bytes] = set()
        for i in np.lexsort((cost, usage)):
            if not np.isfinite(usage[i]):
                continue
            key = self.results[i].choice.tobytes()  # type: ignore[union-attr]
            better = not np.isfinite(best) or cost[i] < best - 1e-12 * abs(best)
            if better and key not in seen:
                out[i] = False
                best = cost[i]
            seen.add(key)
        return out

    def to_frame(self, *, include_dominated: bool = False):
        """One row per budget: budget, status, avg_bits, bytes, MiB, predicted cost, gap, seconds,
        and any measured columns added with :meth:`add_measurement`."""
        import pandas as pd

        frame = pd.DataFrame(self._rows())
        for name, values in self.measured.items():
            frame[name] = [np.nan if v is None else v for v in values]
        frame["dominated"] = self.dominated()
        if not include_dominated:
            frame = frame[~frame["dominated"]].drop(columns="dominated")
        return frame.reset_index(drop=True)

    @property
    def front(self) -> list[SolveResult]:
        mask = self.dominated()
        order = sorted((i for i in range(len(self.results)) if not mask[i]), key=lambda i: self.results[i].budgets[0].value)
        return [self.results[i] for i in order]

    def add_measurement(self, name: str, values: Sequence[float | None] | Mapping[int, float]) -> None:
        """Attach a measured metric (e.g. accuracy) per result, in the order of ``results``."""
        if isinstance(values, Mapping):
            values = [values.get(i) for i in range(len(self.results))]
        if len(values) != len(self.results):
            raise MPSearchError(f"measurements must give one value per result ({len(self.results)}), but got {len(values)}.")
        self.measured[name] = list(values)

    def save(self, out_dir: str | os.PathLike[str], *, overwrite: bool = False, x: str = "avg_bits") -> list:
        """Write ``pareto.csv``, ``pareto.png``, ``plans/*.json`` and a manifest into ``out_dir``; the paths written.

        A folder holding an earlier front is refused unless ``overwrite``, which removes exactly
        the files that front's manifest lists (see :mod:`mpsearch.solvers.front_dir`).
        """
        from mpsearch.solvers.front_dir import write_front

        return write_front(self, out_dir, overwrite=overwrite, x=x)

    def plot(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        x: str = "avg_bits",
        measured: str | None = None,
        baselines: Mapping[str, tuple[float, float]] | None = None,
        reference: tuple[str, float] | None = None,
        title: str | None = None,
    ):
        """Plot predicted cost (and a measured metric, when given) against average bits or MiB.

        ``baselines`` maps a label to an (x, measured value) point, e.g. uniform plans;
        ``reference`` is a (label, value) drawn as a horizontal line, e.g. ("fp32", 91.7).
        Returns the figure; writes it atomically when ``path`` is given (PNG or SVG by suffix).
        """
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from mpsearch.core.io import atomic_savefig

        if x not in ("avg_bits", "mib"):
            raise MPSearchError(f"`x` must be 'avg_bits' or 'mib', but got {x!r}.")
        frame = self.to_frame()
        panels = 2 if measured else 1
        fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.0), squeeze=False)
        ax = axes[0, 0]
        ax.plot(frame[x], frame["predicted_cost"], "o-", color="C0", label="Pareto front")
        ax.set_yscale("log" if (frame["predicted_cost"] > 0).all() and len(frame) > 1 else "linear")
        ax.set_xlabel("average bits per weight" if x == "avg_bits" else "MiB")
        ax.set_ylabel("predicted loss increase")
        ax.grid(alpha=0.3)
        ax.legend()
        if measured:
            if measured not in frame:
                raise MPSearchError(f"`measured` must name a column added with add_measurement, but got {measured!r}.")
            ax2 = axes[0, 1]
            ax2.plot(frame[x], frame[measured], "o-", color="C1", label="mixed precision")
            for i, (label, (bx, by)) in enumerate((baselines or {}).items()):
                ax2.plot([bx], [by], marker="s", linestyle="none", color=f"C{i + 2}", label=label)
            if reference is not None:
                ax2.axhline(reference[1], color="0.4", linestyle="--", linewidth=1, label=reference[0])
            ax2.set_xlabel(ax.get_xlabel())
            ax2.set_ylabel(measured)
            ax2.grid(alpha=0.3)
            ax2.legend(fontsize="small")
        fig.suptitle(title or f"Pareto front ({self.costs.meta.get('model', 'model')})")
        fig.tight_layout()
        if path is not None:
            atomic_savefig(fig, path, dpi=120)
        return fig


def pareto(
    costs: CostTable,
    budgets: Iterable[float | Budget],
    *,
    solver: str | Solver = "ilp",
    kind: str = "avg_bits",
    time_limit: float | None = None,
    extra_budgets: Sequence[Budget] = (),
    progress: bool = False,
) -> ParetoFront:
    """Solve once per budget value and collect a :class:`ParetoFront`.

    >>> # front = pareto(costs, [2.5, 3, 3.5, 4]); front.to_frame(); front.plot("front.png")
    """
    from tqdm.auto import tqdm

    engine = get_solver(solver)
    values = [b if isinstance(b, Budget) else Budget(kind=kind, value=b) for b in budgets]
    if not values:
        raise MPSearchError("`budgets` must hold at least one value, but is empty. Pass e.g. [2.5, 3, 3.5, 4].")
    kinds = {b.kind for b in values}
    if len(kinds) != 1:
        raise MPSearchError(f"a sweep must vary one budget kind, but got {sorted(kinds)}. Use extra_budgets for fixed limits.")
    check_ceiling(costs, (*values, *extra_budgets))  # every value, before the first solve
    if hasattr(engine, "front") and not extra_budgets:  # a one-pass front (e.g. the DP)
        return engine.front(costs, values, kind=values[0].kind)
    results = [
        engine.solve(costs, (b, *extra_budgets), time_limit=time_limit)
        for b in tqdm(values, desc="pareto", disable=not progress, leave=False)
    ]
    return ParetoFront(costs=costs, results=results, kind=values[0].kind)
