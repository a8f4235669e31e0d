"""Pre-export check: what each target can hold, every change reported with its predicted cost, or a refusal."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import ConfigError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.export_check import check_export

L0 = "model.layers.0."
UNITS = [L0 + s for s in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
BITS = (2, 3, 4, 5, 6, 8)


def _table() -> CostTable:
    # cost of unit i at b bits: (i + 1) * 2^-b, so every change has a known exact price
    cost = np.array([[(i + 1) * 2.0**-b for b in BITS] for i in range(len(UNITS))])
    n = np.full(len(UNITS), 100.0)
    return CostTable(items=tuple(UNITS), bits=BITS, cost=cost, storage_bits=n[:, None] * np.array(BITS, float), n_weights=n)


def test_plan_that_fits_is_unchanged():
    plan = BitPlan(bits=dict.fromkeys(UNITS, 4))
    for target in ("gguf", "compressed-tensors", "vllm"):
        result = check_export(plan, target, costs=_table(), allow_changes=False)
        assert result.plan == plan and result.changes == () and result.cost_delta == 0.0


def test_vllm_lifts_widths_and_fuses_projections_with_exact_cost():
    widths = [3, 4, 8, 5, 2, 6, 4]  # q k v o gate up down
    plan = BitPlan(bits=dict(zip(UNITS, widths)))
    result = check_export(plan, "vllm", costs=_table())
    got = {u.rpartition(".")[2]: result.plan.bits[u] for u in UNITS}
    # q,k,v -> widest (8); o 5 -> 8 (vllm holds 4 or 8); gate 2 -> 4, up 6 -> 8, then gate/up fused -> 8
    assert got == {"q_proj": 8, "k_proj": 8, "v_proj": 8, "o_proj": 8, "gate_proj": 8, "up_proj": 8, "down_proj": 4}
    changed = {c.unit.rpartition(".")[2]: c for c in result.changes}
    assert set(changed) == {"q_proj", "k_proj", "o_proj", "gate_proj", "up_proj"}
    assert "fused" in changed["gate_proj"].reason and "not a vllm width" in changed["gate_proj"].reason
    expected = sum((i + 1) * (2.0**-got[u.rpartition(".")[2]] - 2.0**-w) for i, (u, w) in enumerate(zip(UNITS, widths)))
    assert result.cost_delta == pytest.approx(expected)
    assert all(c.exported >= (max(c.planned) if isinstance(c.planned, tuple) else c.planned) for c in result.changes)
    assert "predicted cost" in result.report()
    with pytest.raises(PlanMismatchError, match="5 unit"):
        check_export(plan, "vllm", allow_changes=False)


def test_per_group_widths_are_merged_to_the_widest():
    plan = BitPlan(bits={UNITS[0]: (2, 3, 2, 3), **dict.fromkeys(UNITS[1:], 4)}, quantizer=QuantizerConfig(group_size=2))
    result = check_export(plan, "gguf")
    assert result.plan.bits[UNITS[0]] == 3 and [c.unit for c in result.changes] == [UNITS[0]]
    assert result.cost_delta is None  # no table given: the change is still reported


def test_refusals_state_the_rule():
    plan = BitPlan(bits=dict.fromkeys(UNITS, 4), quantizer=QuantizerConfig(group_size=48))
    with pytest.raises(PlanMismatchError, match="group sizes"):
        check_export(plan, "vllm")
    with pytest.raises(PlanMismatchError, match="divide"):
        check_export(plan, "compressed-tensors", row_lengths=dict.fromkeys(UNITS, 64))
    with pytest.raises(ConfigError, match="target"):
        check_export(plan, "onnx")
