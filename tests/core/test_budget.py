"""Tests for budgets (mpsearch/core/budget.py): validation, CLI parsing, resource matrices."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from mpsearch.core.budget import Budget, as_budgets
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BudgetError, MPSearchError

VALUE_RULE = "a budget value must be a positive finite number"
PARSE_RULE = "a budget must read like"


@pytest.fixture
def table() -> CostTable:
    storage = np.array([[20.0, 40.0, 80.0], [60.0, 120.0, 240.0]])
    bops = np.array([[1.0, 2.0, 4.0], [3.0, 6.0, 12.0]])
    return CostTable(
        items=("a", "b"), bits=(2, 4, 8), cost=np.array([[3.0, 2.0, 1.0], [6.0, 5.0, 4.0]]),
        storage_bits=storage, n_weights=np.array([10, 30]), resources={"bops": bops},
    )


# ---- construction ---------------------------------------------------------
def test_valid_budget_stores_float_value() -> None:
    budget = Budget(kind="avg_bits", value=3)
    assert budget.value == 3.0 and isinstance(budget.value, float)
    assert budget.kind == "avg_bits"


def test_default_kind_is_avg_bits() -> None:
    assert Budget(value=2.5).kind == "avg_bits"


def test_budget_is_frozen() -> None:
    budget = Budget.avg_bits(3.0)
    with pytest.raises(AttributeError):
        budget.value = 4.0  # type: ignore[misc]


@pytest.mark.parametrize("value", [0, 0.0, -1, -3.5, math.nan, math.inf, -math.inf])
def test_non_positive_or_non_finite_value_raises(value: float) -> None:
    with pytest.raises(BudgetError, match=VALUE_RULE):
        Budget(kind="avg_bits", value=value)


@pytest.mark.parametrize("value", ["three", None, [3.0], object()])
def test_non_number_value_raises(value: object) -> None:
    with pytest.raises(BudgetError, match=VALUE_RULE):
        Budget(kind="avg_bits", value=value)  # type: ignore[arg-type]


def test_budget_error_is_a_value_error_and_mpsearch_error() -> None:
    with pytest.raises(ValueError, match=VALUE_RULE):
        Budget(value=-1)
    with pytest.raises(MPSearchError, match=VALUE_RULE):
        Budget(value=-1)


@pytest.mark.parametrize("kind", ["", 3, None])
def test_bad_kind_raises(kind: object) -> None:
    with pytest.raises(BudgetError, match="`kind` must be a resource name"):
        Budget(kind=kind, value=3.0)  # type: ignore[arg-type]


def test_bool_value_is_rejected() -> None:
    # regression: float(True) == 1.0 used to make True a 1-bit budget
    with pytest.raises(BudgetError, match=VALUE_RULE):
        Budget(kind="avg_bits", value=True)


def test_constructors() -> None:
    assert Budget.avg_bits(3) == Budget(kind="avg_bits", value=3.0)
    assert Budget.bytes(1024) == Budget(kind="bytes", value=1024.0)


# ---- parse ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("3", "avg_bits", 3.0),
        ("2.75", "avg_bits", 2.75),
        ("3bits", "avg_bits", 3.0),
        ("3.5BITS", "avg_bits", 3.5),
        (" 4 ", "avg_bits", 4.0),
        ("1.5MiB", "bytes", 1.5 * 2**20),
        ("120000B", "bytes", 120000.0),
        ("200KiB", "bytes", 200.0 * 1024),
        ("2GiB", "bytes", 2.0 * 2**30),
        ("3MB", "bytes", 3e6),
        ("5kb", "bytes", 5e3),
        ("bops=1e9", "bops", 1e9),
        ("latency_ms = 2.5", "latency_ms", 2.5),
        ("bytes=4096", "bytes", 4096.0),
    ],
)
def test_parse(text: str, kind: str, value: float) -> None:
    budget = Budget.parse(text)
    assert budget.kind == kind
    assert budget.value == pytest.approx(value, rel=1e-15)


@pytest.mark.parametrize("text", ["", "abc", "bits", "MiB", "3 apples", "bops=", "bops=many", "1..5MiB"])
def test_parse_garbage_raises(text: str) -> None:
    with pytest.raises(BudgetError, match=PARSE_RULE + r".*, but got " + re.escape(repr(text)) + r"\. Pass a number of bits"):
        Budget.parse(text)


@pytest.mark.parametrize(
    "text, match",
    [("-3", "positive finite number, but got value=-3.0"), ("0bits", "positive finite number, but got value=0.0"),
     ("nan", "positive finite number, but got value=nan"), ("inf", "positive finite number, but got value=inf"),
     ("=3", "`kind` must be a resource name")],
)
def test_parse_reports_the_broken_rule(text: str, match: str) -> None:
    """Text that parses but breaks a budget rule names that rule, not a parse failure."""
    with pytest.raises(BudgetError, match=match):
        Budget.parse(text)


def test_parse_error_quotes_the_input() -> None:
    with pytest.raises(BudgetError, match=r"but got '12 parsecs'"):
        Budget.parse("12 parsecs")


def test_parse_decimal_gigabytes() -> None:
    # regression: 'gb' was missing from the unit table while 'mb', 'kb' and 'gib' were there
    assert Budget.parse("1GB") == Budget.bytes(1e9)
    assert Budget.parse("1.5gb") == Budget.bytes(1.5e9)


# ---- matrix -----------------------------------------------------------------
def test_matrix_avg_bits_divides_storage_by_total_weights(table: CostTable) -> None:
    got = Budget.avg_bits(3).matrix(table)
    np.testing.assert_allclose(got, table.storage_bits / 40.0, rtol=0, atol=0)
    # a uniform choice's summed row equals the table's average bits
    choice = np.array([1, 1])
    assert got[np.arange(2), choice].sum() == pytest.approx(table.average_bits(choice))
    assert got[np.arange(2), choice].sum() == pytest.approx((40.0 + 120.0) / 40.0)


def test_matrix_bytes_is_storage_over_eight(table: CostTable) -> None:
    np.testing.assert_array_equal(Budget.bytes(100).matrix(table), table.storage_bits / 8.0)


def test_matrix_custom_resource(table: CostTable) -> None:
    np.testing.assert_array_equal(Budget(kind="bops", value=5).matrix(table), table.resources["bops"])


def test_matrix_unknown_kind_lists_known_kinds(table: CostTable) -> None:
    with pytest.raises(BudgetError, match=r"must be one of \['avg_bits', 'bytes', 'bops'\], but got kind='latency'"):
        Budget(kind="latency", value=1.0).matrix(table)


def test_describe() -> None:
    assert Budget.avg_bits(3).describe() == "3 bits/weight"
    assert Budget.bytes(1.5 * 2**20).describe() == "1.5 MiB"
    assert Budget(kind="bops", value=1e9).describe() == "bops <= 1e+09"


# ---- as_budgets -------------------------------------------------------------
def test_as_budgets_single_budget() -> None:
    b = Budget.bytes(1000)
    assert as_budgets(b) == (b,)


@pytest.mark.parametrize("value", [3, 3.5, np.float64(2.5)])
def test_as_budgets_number_means_avg_bits(value: float) -> None:
    assert as_budgets(value) == (Budget.avg_bits(float(value)),)


def test_as_budgets_string_is_parsed() -> None:
    assert as_budgets("1.5MiB") == (Budget.bytes(1.5 * 2**20),)


def test_as_budgets_sequence_and_generator() -> None:
    a, b = Budget.avg_bits(3), Budget(kind="bops", value=10)
    assert as_budgets([a, b]) == (a, b)
    assert as_budgets(x for x in (a, b)) == (a, b)


@pytest.mark.parametrize("bad", [[], [Budget.avg_bits(3), 4.0], ["3"]])
def test_as_budgets_bad_list_raises(bad: list) -> None:
    with pytest.raises(BudgetError, match="a budget list must hold at least one Budget and only Budgets"):
        as_budgets(bad)


@pytest.mark.parametrize("bad", [None, True, object()])
def test_as_budgets_non_budget_raises(bad: object) -> None:
    with pytest.raises(BudgetError, match="a budget must be a Budget, a number of bits or a list of Budgets"):
        as_budgets(bad)  # type: ignore[arg-type]


def test_as_budgets_negative_number_raises() -> None:
    with pytest.raises(BudgetError, match=VALUE_RULE):
        as_budgets(-2.0)


@pytest.mark.parametrize("value", [np.int64(3), np.float32(3.5)])
def test_as_budgets_numpy_scalars(value) -> None:
    assert as_budgets(value) == (Budget.avg_bits(float(value)),)
