"""The command line and the quickstart sweep stay within a table's useful budgets; a budget above
it is one line on stderr and exit status 2."""

from __future__ import annotations

import numpy as np

from mpsearch.cli.main import main
from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable


def narrow_table(path):
    """Widest choice 4 bits: the default 2:8 sweep reaches past it."""
    n_weights = np.array([300, 500, 800])
    bits = np.array([2, 3, 4])
    costs = CostTable(items=("a", "b", "c"), bits=(2, 3, 4), cost=np.outer(n_weights, 2.0 ** (-2 * bits)),
                      storage_bits=n_weights[:, None] * bits + 32.0, n_weights=n_weights, meta={"model": "toy"})
    costs.save(path)
    return costs


def test_search_above_the_largest_useful_budget_is_an_error(tmp_path, capsys) -> None:
    costs = narrow_table(tmp_path / "c.json")
    top = costs.max_usage(Budget.avg_bits(1.0))
    code = main(["search", "--costs", str(tmp_path / "c.json"), "--budget", "8", "--out", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "p.json").exists()
    assert err == (f"mpsearch search: error: a budget must be at most the largest useful one, but an average-bits budget "
                   f"of 8 bits/weight is above {top:.7g} bits/weight (every unit at its widest allowed choice, up to 4 "
                   f"bits). Lower it to at most avg_bits={top:.7g}, or add wider bit choices.\n")
    assert main(["search", "--costs", str(tmp_path / "c.json"), "--budget", f"{top:.7g}", "--out",
                 str(tmp_path / "p.json"), "--quiet"]) == 0
    assert main(["search", "--costs", str(tmp_path / "c.json"), "--budget", "1GiB", "--out", str(tmp_path / "q.json")]) == 2
    assert "a bytes budget of 1073741824 bytes is above" in capsys.readouterr().err


def test_pareto_default_sweep_stops_at_the_largest_useful_budget(tmp_path, capsys) -> None:
    narrow_table(tmp_path / "c.json")
    assert main(["pareto", "--costs", str(tmp_path / "c.json"), "--out-dir", str(tmp_path / "f"), "--quiet"]) == 0
    budgets = [float(line.split(",")[1]) for line in (tmp_path / "f" / "pareto.csv").read_text().splitlines()[1:]]
    assert budgets and max(budgets) <= 4.0
    assert main(["pareto", "--costs", str(tmp_path / "c.json"), "--kind", "bytes", "--out-dir", str(tmp_path / "g"),
                 "--quiet"]) == 0
    code = main(["pareto", "--costs", str(tmp_path / "c.json"), "--budgets", "2:8:1", "--out-dir", str(tmp_path / "h")])
    assert code == 2 and "an average-bits budget of 5 bits/weight is above" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()  # rejected before any solve or write
