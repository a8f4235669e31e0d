"""Tests for the Pareto sweep (mpsearch/solvers/pareto.py): non-domination, frames, measurements, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import MPSearchError
from mpsearch.solvers import Status, solve
from mpsearch.solvers.pareto import ParetoFront, pareto

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_table(seed: int, n: int = 8) -> CostTable:
    rng = np.random.default_rng(seed)
    bits = (2, 3, 4, 8)
    n_weights = rng.integers(50, 2000, size=n)
    allowed = np.ones((n, 4), bool)
    allowed[0] = [False, False, False, True]  # a pinned first layer
    return CostTable(
        items=tuple(f"layer{i}" for i in range(n)), bits=bits,
        cost=rng.lognormal(0, 1, size=(n, 1)) * np.sort(rng.random((n, 4)), axis=1)[:, ::-1],
        storage_bits=n_weights[:, None] * np.array(bits) + 16 * rng.integers(1, 20, size=(n, 1)),
        n_weights=n_weights, allowed=allowed, ties=((2, 3),),
        resources={"bops": rng.uniform(1, 4, size=(n, 1)) * n_weights[:, None] * np.array(bits)},
        meta={"model": "toy"},
    )


@pytest.fixture(scope="module")
def table() -> CostTable:
    return random_table(0)


@pytest.fixture(scope="module")
def sweep(table: CostTable) -> tuple[list[float], ParetoFront]:
    low, high = table.min_usage(Budget.avg_bits(1.0)), table.max_usage(Budget.avg_bits(1.0))
    # infeasible, then up to the largest useful budget (every unit at 8 bits), the last three at it
    values = [low * 0.8, low * 0.95] + list(np.linspace(low, high * 0.97, 13)) + [high * (1 - 1e-10), high, high * (1 + 1e-7)]
    return values, pareto(table, values)


def usage(r) -> float:
    return r.costs.usage(r.choice, r.budgets[0])


def test_one_result_per_budget_in_order(sweep) -> None:
    values, front = sweep
    assert [r.budgets[0].value for r in front.results] == pytest.approx(values)
    assert front.kind == "avg_bits"


def test_front_is_non_dominated_and_strictly_improving(sweep) -> None:
    _, front = sweep
    kept = front.front
    assert len(kept) >= 4
    usages = [usage(r) for r in kept]
    costs = [r.objective for r in kept]
    assert usages == sorted(usages)
    assert all(b < a for a, b in zip(costs, costs[1:]))  # strictly decreasing cost as usage grows
    assert len({r.choice.tobytes() for r in kept}) == len(kept)  # no plan repeated


def test_every_dropped_feasible_result_is_dominated_by_a_kept_one(sweep) -> None:
    _, front = sweep
    mask = front.dominated()
    kept = [r for r, d in zip(front.results, mask) if not d]
    for r, dominated in zip(front.results, mask):
        if dominated and r.choice is not None:
            assert any(usage(k) <= usage(r) * (1 + 1e-12) and k.objective <= r.objective * (1 + 1e-12) for k in kept)


def test_kept_points_equal_fresh_ilp_solves(sweep, table: CostTable) -> None:
    _, front = sweep
    for r in front.front:
        fresh = solve(table, r.budgets[0])
        assert fresh.status is Status.OPTIMAL
        assert r.objective == pytest.approx(fresh.objective, rel=1e-9)
        np.testing.assert_array_equal(r.choice, fresh.choice)


def test_infeasible_budgets_are_status_rows_only(sweep) -> None:
    values, front = sweep
    assert [r.status for r in front.results[:2]] == [Status.INFEASIBLE, Status.INFEASIBLE]
    assert all(r.status is Status.OPTIMAL for r in front.results[2:])
    assert all(r.choice is not None for r in front.front)
    full = front.to_frame(include_dominated=True)
    assert len(full) == len(values)
    infeasible = full[full["status"] == "infeasible"]
    assert len(infeasible) == 2
    assert infeasible["dominated"].all()
    assert infeasible["predicted_cost"].isna().all() and infeasible["avg_bits"].isna().all()
    kept = front.to_frame()
    assert (kept["status"] != "infeasible").all()
    assert len(kept) == len(front.front)


def test_saturated_budgets_collapse_to_one_point(sweep) -> None:
    _, front = sweep
    # the last three budgets (at the largest useful one, within float rounding) give the all-8-bit plan:
    # only one of them is on the front
    top = [r for r in front.results if r.budgets[0].value >= front.results[-3].budgets[0].value]
    assert len(top) == 3 and len({r.choice.tobytes() for r in top}) == 1
    assert all(r.bits == dict.fromkeys(r.bits, 8) for r in top)
    assert sum(not d for r, d in zip(front.results, front.dominated()) if r in top) <= 1


def test_to_frame_columns_and_values(sweep, table: CostTable) -> None:
    _, front = sweep
    frame = front.to_frame()
    assert list(frame.columns) == [
        "budget_kind", "budget", "status", "solver", "avg_bits", "bytes", "mib", "predicted_cost", "gap", "seconds",
    ]
    assert list(front.to_frame(include_dominated=True).columns) == list(frame.columns) + ["dominated"]
    assert (frame["budget_kind"] == "avg_bits").all() and (frame["solver"] == "ilp").all()
    assert (frame["gap"] == 0.0).all()
    assert (frame["avg_bits"] <= frame["budget"] * (1 + 1e-9)).all()
    for row, r in zip(frame.itertuples(), front.front):
        assert row.avg_bits == pytest.approx(table.average_bits(r.choice))
        assert row.bytes == pytest.approx(table.storage_bytes(r.choice))
        assert row.mib == pytest.approx(row.bytes / 2**20)
        assert row.predicted_cost == pytest.approx(r.objective)


def test_custom_kind_sweep_has_its_column(table: CostTable) -> None:
    low = table.min_usage(Budget(kind="bops", value=1.0))
    high = table.max_usage(Budget(kind="bops", value=1.0))
    front = pareto(table, [low * 1.05, low * 1.5, high], kind="bops")
    frame = front.to_frame(include_dominated=True)
    assert front.kind == "bops" and (frame["budget_kind"] == "bops").all()
    assert "bops" in frame.columns
    assert (frame["bops"] <= frame["budget"] * (1 + 1e-9)).all()


def test_extra_budgets_apply_to_every_solve(table: CostTable) -> None:
    cap = Budget.bytes(table.min_usage(Budget.bytes(1.0)) * 1.2)
    front = pareto(table, [4.0, 6.0, 8.0], extra_budgets=[cap])
    for r in front.results:
        assert r.budgets[1] == cap
        if r.choice is not None:
            assert table.storage_bytes(r.choice) <= cap.value * (1 + 1e-9)


def test_budgets_given_as_budget_objects(table: CostTable) -> None:
    front = pareto(table, [Budget.avg_bits(4.0), Budget.avg_bits(6.0)])
    assert [r.budgets[0] for r in front.results] == [Budget.avg_bits(4.0), Budget.avg_bits(6.0)]


def test_mixed_budget_kinds_raise(table: CostTable) -> None:
    with pytest.raises(MPSearchError, match=r"a sweep must vary one budget kind, but got \['avg_bits', 'bytes'\]"):
        pareto(table, [Budget.avg_bits(4.0), Budget.bytes(10_000)])
    with pytest.raises(MPSearchError, match=r"but got \['avg_bits', 'bops'\]"):
        pareto(table, [4.0, Budget(kind="bops", value=1e6)])


def test_empty_sweep_raises(table: CostTable) -> None:
    with pytest.raises(MPSearchError, match="`budgets` must hold at least one value, but is empty"):
        pareto(table, [])


# ---- measurements and plots ---------------------------------------------------
def test_add_measurement(sweep) -> None:
    values, front = sweep
    front = ParetoFront(costs=front.costs, results=front.results, kind=front.kind)
    acc = [None if r.choice is None else 50.0 + i for i, r in enumerate(front.results)]
    front.add_measurement("accuracy", acc)
    full = front.to_frame(include_dominated=True)
    assert full["accuracy"].isna().sum() == 2
    assert full["accuracy"].iloc[5] == 55.0
    kept = front.to_frame()
    mask = ~front.dominated()
    assert kept["accuracy"].tolist() == [a for a, m in zip(acc, mask) if m]
    front.add_measurement("loss", {2: 0.5})
    assert front.to_frame(include_dominated=True)["loss"].notna().sum() == 1


@pytest.mark.parametrize("n", [0, 3, 100])
def test_add_measurement_length_check(sweep, n: int) -> None:
    values, front = sweep
    front = ParetoFront(costs=front.costs, results=front.results, kind=front.kind)
    with pytest.raises(MPSearchError, match=rf"measurements must give one value per result \({len(values)}\), but got {n}"):
        front.add_measurement("accuracy", [1.0] * n)
    assert front.measured == {}


@pytest.fixture
def measured_front(sweep) -> ParetoFront:
    _, front = sweep
    out = ParetoFront(costs=front.costs, results=front.results, kind=front.kind)
    out.add_measurement("accuracy", [None if r.choice is None else 80.0 + i for i, r in enumerate(out.results)])
    return out


@pytest.mark.parametrize("measured", [None, "accuracy"])
def test_plot_png_and_svg(measured_front: ParetoFront, tmp_path: Path, measured: str | None) -> None:
    import matplotlib.pyplot as plt

    png = tmp_path / "figs" / "front.png"
    fig = measured_front.plot(png, measured=measured, baselines={"uniform 4": (4.1, 79.0)})
    assert len(fig.axes) == (2 if measured else 1)
    plt.close(fig)
    assert png.read_bytes()[:8] == PNG_MAGIC
    svg = tmp_path / "front.svg"
    fig = measured_front.plot(svg, x="mib", measured=measured, title="toy")
    plt.close(fig)
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["front.png", "front.svg"]


def test_plot_without_path_returns_figure(measured_front: ParetoFront, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = measured_front.plot()
    assert fig.axes[0].get_xlabel() == "average bits per weight"
    assert fig._suptitle.get_text() == "Pareto front (toy)"
    plt.close(fig)
    assert list(tmp_path.iterdir()) == []


def test_plot_errors(measured_front: ParetoFront, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    with pytest.raises(MPSearchError, match=r"`x` must be 'avg_bits' or 'mib', but got 'bytes'"):
        measured_front.plot(tmp_path / "a.png", x="bytes")
    with pytest.raises(MPSearchError, match=r"`measured` must name a column added with add_measurement, but got 'top5'"):
        measured_front.plot(tmp_path / "b.png", measured="top5")
    plt.close("all")
    assert not (tmp_path / "a.png").exists() and not (tmp_path / "b.png").exists()
