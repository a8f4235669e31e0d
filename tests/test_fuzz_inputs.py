"""Malformed plans, cost tables and budgets: always an MPSearchError, never another exception,
never a silently wrong plan."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsearch.core.budget import Budget
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BudgetTooLargeError, MPSearchError
from mpsearch.core.plan import BitPlan
from mpsearch.solvers import solve

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-20, 40), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8), st.sampled_from(["symmetric", "affine", "mpsearch.bitplan", "float16", "conv1"]),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12,
)

VALID = {
    "format": "mpsearch.bitplan", "version": 1,
    "quantizer": {"scheme": "affine", "group_size": None, "clip_search": True, "clip_grid": 20, "scale_dtype": "float16"},
    "bits": {"conv1": 8, "layer1.0.conv1": 3, "fc": 4},
    "meta": {"solver": "ilp"},
}
FIELDS = ["format", "version", "quantizer", "bits", "meta", "extra"]
QUANT_FIELDS = ["scheme", "group_size", "clip_search", "clip_grid", "scale_dtype", "bogus"]


@st.composite
def mutated_plans(draw):
    """Near-valid documents: one to three fields replaced, removed or nested wrongly."""
    doc = json.loads(json.dumps(VALID))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["top", "quantizer", "bits"]))
        if where == "top":
            key = draw(st.sampled_from(FIELDS))
            if draw(st.booleans()):
                doc.pop(key, None)
            else:
                doc[key] = draw(json_values)
        elif where == "quantizer" and isinstance(doc.get("quantizer"), dict):
            doc["quantizer"][draw(st.sampled_from(QUANT_FIELDS))] = draw(json_values)
        elif isinstance(doc.get("bits"), dict):
            doc["bits"][draw(st.sampled_from(["conv1", "fc", "", "x"]))] = draw(json_values)
    return doc


def check_plan_document(text: str) -> None:
    try:
        plan = BitPlan.from_json(text)
    except MPSearchError:
        return
    # Accepted: it must be a real, self-consistent plan.
    assert plan.bits
    for value in plan.bits.values():
        widths = value if isinstance(value, tuple) else (value,)
        assert all(isinstance(b, int) and not isinstance(b, bool) and (1 <= b <= 8 or b == 16) for b in widths)
    assert BitPlan.from_json(plan.to_json()) == plan


@settings(max_examples=1200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_plans())
def test_mutated_plan_documents(doc):
    check_plan_document(json.dumps(doc))


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_as_plan(doc):
    check_plan_document(json.dumps(doc))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64) | st.text(max_size=64))
def test_arbitrary_bytes_as_plan(raw):
    try:
        BitPlan.from_json(raw)
    except MPSearchError:
        pass


def small_table() -> CostTable:
    rng = np.random.default_rng(0)
    cost = np.sort(rng.random((4, 3)), axis=1)[:, ::-1]
    storage = np.array([[2, 4, 8]] * 4, float) * np.array([[10], [20], [30], [40]])
    return CostTable(items=("a", "b", "c", "d"), bits=(2, 4, 8), cost=cost, storage_bits=storage, n_weights=np.array([10, 20, 30, 40]))


TABLE = small_table()


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(st.sampled_from(["avg_bits", "bytes", "bops", "", "latency_ms"]), json_scalars),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 100), json_scalars),
)
def test_budgets_to_the_solver(kind, value):
    try:
        budget = Budget(kind=kind, value=value)
        result = solve(TABLE, budget)
    except BudgetTooLargeError:  # above the all-widest plan: rejected, never solved
        assert budget.value > TABLE.max_usage(budget)
        return
    except MPSearchError:
        return
    assert math.isfinite(budget.value) and budget.value > 0
    assert budget.value <= TABLE.max_usage(budget) * (1 + 1e-6)
    if result.choice is not None:  # a plan that exists must meet the budget
        assert TABLE.usage(result.choice, budget) <= budget.value * (1 + 1e-9)
    else:
        assert result.min_feasible[budget.kind] > budget.value


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_budget_text(text):
    try:
        budget = Budget.parse(text)
    except MPSearchError:
        return
    assert math.isfinite(budget.value) and budget.value > 0


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["items", "bits", "cost", "storage_bits", "n_weights", "ties", "resources", "version"]), json_values)
def test_mutated_cost_tables(key, value):
    doc = TABLE.to_dict()
    doc[key] = value
    try:
        CostTable.from_dict(doc)
    except MPSearchError:
        pass
