"""Tests for cost tables (mpsearch/core/costs.py): validation, ties, usage, persistence."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from mpsearch.core.budget import Budget
from mpsearch.core.config import QuantizerConfig
from mpsearch.core.costs import CostTable
from mpsearch.core.errors import BitsOutOfRangeError, CostTableError, PlanMismatchError
from mpsearch.core.plan import BitPlan

BITS = (2, 4, 8)


def table(**overrides) -> CostTable:
    """Three items x (2, 4, 8) bits; item 'fc' is pinned to 8 bits."""
    args = dict(
        items=("conv", "mid", "fc"),
        bits=BITS,
        cost=np.array([[9.0, 3.0, 1.0], [4.0, 2.0, 0.5], [np.nan, np.nan, 0.25]]),
        storage_bits=np.array([[200.0, 400.0, 800.0], [64.0, 128.0, 256.0], [np.nan, np.nan, 80.0]]),
        n_weights=np.array([100, 32, 10]),
        allowed=np.array([[True, True, True], [True, True, True], [False, False, True]]),
    )
    args.update(overrides)
    return CostTable(**args)


def random_table(seed: int) -> CostTable:
    rng = np.random.default_rng(seed)
    n, c = int(rng.integers(3, 7)), int(rng.integers(2, 5))
    bits = tuple(sorted(int(b) for b in rng.choice(np.arange(1, 9), size=c, replace=False)))
    n_weights = rng.integers(5, 500, size=n)
    allowed = rng.random((n, c)) < 0.8
    allowed[np.arange(n), rng.integers(0, c, size=n)] = True
    cost = np.sort(rng.random((n, c)), axis=1)[:, ::-1] * rng.lognormal(0, 1, size=(n, 1))
    storage = n_weights[:, None] * np.array(bits)[None, :] + rng.integers(0, 64, size=(n, 1))
    ties = []
    for _ in range(int(rng.integers(0, 3))):
        group = tuple(int(i) for i in rng.choice(n, size=2, replace=False))
        if allowed[list(group)].all(axis=0).any():
            ties.append(group)
    if ties and not allowed[sorted({i for t in ties for i in t})].all(axis=0).any():
        ties = ties[:1]  # overlapping ties could merge into a group without a shared choice
    return CostTable(
        items=tuple(f"u{i}" for i in range(n)), bits=bits, cost=cost, storage_bits=storage,
        n_weights=n_weights, allowed=allowed, ties=tuple(ties),
        resources={"bops": rng.uniform(1, 3, size=(n, 1)) * storage},
    )


def brute_min_usage(costs: CostTable, matrix: np.ndarray) -> float:
    """The smallest summed ``matrix`` value over every allowed, tie-respecting assignment."""
    options = [np.flatnonzero(costs.allowed[i]) for i in range(costs.n_items)]
    best = np.inf
    for combo in itertools.product(*options):
        if any(len({combo[i] for i in group}) > 1 for group in costs.ties):
            continue
        best = min(best, float(sum(matrix[i, c] for i, c in enumerate(combo))))
    return best


# ---- validation -------------------------------------------------------------
def test_valid_table_normalizes_fields() -> None:
    costs = table()
    assert costs.n_items == 3 and costs.n_choices == 3
    assert costs.items == ("conv", "mid", "fc") and costs.bits == BITS
    assert costs.cost.dtype == np.float64 and costs.n_weights.dtype == np.int64
    # disallowed cells cost +inf, so no solver can pick them by accident
    assert np.isinf(costs.cost[2, :2]).all()
    assert costs.allowed.dtype == bool


@pytest.mark.parametrize("field", ["cost", "storage_bits", "allowed"])
def test_shape_mismatch_names_the_array(field: str) -> None:
    wrong = np.ones((3, 2), bool if field == "allowed" else float)
    with pytest.raises(CostTableError, match=rf"`{field}` must have shape \(items, choices\) = \(3, 3\), but has \(3, 2\)"):
        table(**{field: wrong})


def test_resource_shape_mismatch_names_the_resource() -> None:
    with pytest.raises(CostTableError, match=r"`resources\['bops'\]` must have shape"):
        table(resources={"bops": np.ones((2, 3))})


def test_n_weights_must_be_positive_and_one_per_item() -> None:
    with pytest.raises(CostTableError, match=r"`n_weights` must be 3 positive integers, but got shape \(2,\)"):
        table(n_weights=np.array([1, 2]))
    with pytest.raises(CostTableError, match="`n_weights` must be 3 positive integers"):
        table(n_weights=np.array([1, 0, 2]))


@pytest.mark.parametrize("bad", [np.nan, -1.0, np.inf])
def test_bad_allowed_cost_names_item_and_bits(bad: float) -> None:
    cost = table().cost.copy()
    cost[1, 1] = bad
    cost[2, :2] = 0.0
    with pytest.raises(CostTableError, match=r"`cost` must be finite and non-negative .* item 'mid' at 4 bits"):
        table(cost=cost)


def test_bad_storage_and_resource_name_the_item() -> None:
    storage = np.where(np.isnan(table().storage_bits), 0.0, table().storage_bits)
    storage[0, 2] = -5.0
    with pytest.raises(CostTableError, match=r"`storage_bits` .* item 'conv' at 8 bits has .*-5\.0"):
        table(storage_bits=storage)
    bops = np.ones((3, 3))
    bops[2, 2] = np.nan
    with pytest.raises(CostTableError, match=r"`resources\['bops'\]` .* item 'fc' at 8 bits has .*nan"):
        table(resources={"bops": bops})


def test_bad_value_is_shown_as_a_plain_number() -> None:
    # regression: NumPy 2 used to render the value as 'np.float64(-5.0)'
    cost = table().cost.copy()
    cost[0, 0] = -5.0
    with pytest.raises(CostTableError, match=r"item 'conv' at 2 bits has -5\.0\. Check"):
        table(cost=cost)


def test_nan_and_negative_allowed_where_disallowed() -> None:
    cost = table().cost.copy()
    cost[2, 0] = -7.0
    storage = table().storage_bits.copy()
    storage[2, 1] = -1.0
    costs = table(cost=cost, storage_bits=storage, resources={"bops": np.array([[1.0] * 3] * 2 + [[np.nan, -2.0, 3.0]])})
    assert costs.cost[2, 0] == np.inf


def test_item_without_allowed_choice() -> None:
    allowed = table().allowed.copy()
    allowed[1] = False
    with pytest.raises(CostTableError, match=r"every item needs at least one allowed bit choice, but \['mid'\] have none"):
        table(allowed=allowed)


@pytest.mark.parametrize("bits", [(4, 2, 8), (2, 2, 8), (8, 4, 2)])
def test_non_increasing_bits(bits: tuple[int, ...]) -> None:
    with pytest.raises(CostTableError, match=r"cost table bits must be strictly increasing, but got"):
        table(bits=bits)


@pytest.mark.parametrize("bits", [(0, 4, 8), (2, 4, 9), (2, 4, 17), (2.0, 4, 8), (True, 4, 8), ("2", 4, 8)])
def test_bits_out_of_range(bits: tuple) -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"cost table bits must be integers within 1\.\.8"):
        table(bits=bits)


def test_numpy_integer_bits_become_python_ints() -> None:
    costs = table(bits=tuple(np.array(BITS)))
    assert costs.bits == BITS and all(type(b) is int for b in costs.bits)


def test_empty_and_duplicate_items() -> None:
    with pytest.raises(CostTableError, match=r"at least one item and one bit choice, but got 0 x 3"):
        CostTable(items=(), bits=BITS, cost=np.ones((0, 3)), storage_bits=np.ones((0, 3)), n_weights=np.ones(0))
    with pytest.raises(CostTableError, match="item names must be unique"):
        table(items=("conv", "conv", "fc"))


def test_tie_without_shared_choice() -> None:
    allowed = np.array([[True, False, False], [True, True, True], [False, False, True]])
    with pytest.raises(CostTableError, match=r"tied items must share an allowed bit choice, but \['conv', 'fc'\] share none"):
        table(allowed=allowed, ties=((0, 2),))


def test_merged_ties_without_shared_choice() -> None:
    # (conv, mid) share 2 bits and (mid, fc) share 8 bits, but the merged group shares nothing
    allowed = np.array([[True, False, False], [True, False, True], [False, False, True]])
    with pytest.raises(CostTableError, match=r"\['conv', 'mid', 'fc'\] share none"):
        table(allowed=allowed, ties=((0, 1), (1, 2)))


def test_tie_index_out_of_range() -> None:
    with pytest.raises(CostTableError, match=r"tie indices must be within 0\.\.2, but got 3"):
        table(ties=((0, 3),))


# ---- ties -------------------------------------------------------------------
def test_overlapping_ties_merge_into_one_group() -> None:
    costs = CostTable(
        items=tuple("abcdef"), bits=(2, 4), cost=np.ones((6, 2)), storage_bits=np.ones((6, 2)),
        n_weights=np.ones(6, int), ties=((4, 1), (0, 5), (1, 2), (5,), (3, 3)),
    )
    assert costs.ties == ((0, 5), (1, 2, 4))


def test_chained_ties_merge_transitively() -> None:
    costs = CostTable(
        items=tuple("abcde"), bits=(2, 4), cost=np.ones((5, 2)), storage_bits=np.ones((5, 2)),
        n_weights=np.ones(5, int), ties=((0, 1), (2, 3), (3, 4), (1, 4)),
    )
    assert costs.ties == ((0, 1, 2, 3, 4),)


# ---- usage ------------------------------------------------------------------
def test_min_usage_without_ties() -> None:
    costs = table()
    assert costs.min_usage(Budget.bytes(1)) == (200 + 64 + 80) / 8
    assert costs.min_usage(Budget.avg_bits(1)) == pytest.approx((200 + 64 + 80) / 142)


def test_min_usage_with_tie_to_pinned_item() -> None:
    # tying 'mid' to the 8-bit 'fc' forces mid to 8 bits
    costs = table(ties=((1, 2),))
    assert costs.min_usage(Budget.bytes(1)) == (200 + 256 + 80) / 8


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("kind", ["avg_bits", "bytes", "bops"])
def test_min_usage_matches_brute_force(seed: int, kind: str) -> None:
    costs = random_table(seed)
    budget = Budget(kind=kind, value=1.0)
    expected = brute_min_usage(costs, budget.matrix(costs))
    assert costs.min_usage(budget) == pytest.approx(expected, rel=1e-12)


def test_random_tables_cover_ties() -> None:
    # guard for the parametrized brute-force test above: some seeds must have ties and pins
    tables = [random_table(s) for s in range(25)]
    assert sum(bool(t.ties) for t in tables) >= 5
    assert sum(int((t.allowed.sum(axis=1) == 1).any()) for t in tables) >= 3


def test_uniform_choice_keeps_pinned_items() -> None:
    costs = table()
    np.testing.assert_array_equal(costs.uniform_choice(2), [0, 0, 2])
    np.testing.assert_array_equal(costs.uniform_choice(4), [1, 1, 2])
    np.testing.assert_array_equal(costs.uniform_choice(8), [2, 2, 2])
    assert costs.uniform_choice(2).dtype == np.int64


def test_uniform_choice_unknown_bits() -> None:
    with pytest.raises(BitsOutOfRangeError, match=r"uniform bits must be one of the table's choices \[2, 4, 8\], but got 3"):
        table().uniform_choice(3)


def test_uniform_choice_respects_ties() -> None:
    # regression: an item tied to a pinned item used to take the uniform width and break the tie
    costs = table(ties=((1, 2),))  # 'mid' tied to 'fc', which is pinned at 8
    np.testing.assert_array_equal(costs.uniform_choice(2), [0, 2, 2])
    costs.check_choice(costs.uniform_choice(2))


def test_uniform_choice_tie_takes_nearest_shared_width() -> None:
    allowed = np.array([[True, True, False], [True, True, True], [False, True, True]])
    costs = table(allowed=allowed, ties=((0, 2),), cost=np.ones((3, 3)), storage_bits=np.ones((3, 3)))
    # conv allows (2, 4), fc allows (4, 8): they share only 4
    np.testing.assert_array_equal(costs.uniform_choice(2), [1, 0, 1])
    np.testing.assert_array_equal(costs.uniform_choice(8), [1, 2, 1])


def test_check_choice_rejects_broken_tie() -> None:
    # regression: check_choice (and so plan()) used to accept an assignment that breaks a tie
    costs = table(ties=((0, 1),))
    with pytest.raises(CostTableError, match=r"tied items must share one bit width, but \['conv', 'mid'\] get \[2, 4\]"):
        costs.check_choice(np.array([0, 1, 2]))
    with pytest.raises(CostTableError, match="tied items must share one bit width"):
        costs.plan(np.array([0, 1, 2]))


def test_average_bits_storage_bytes_objective() -> None:
    costs = table()
    choice = np.array([1, 0, 2])
    assert costs.average_bits(choice) == pytest.approx((400 + 64 + 80) / 142)
    assert costs.storage_bytes(choice) == (400 + 64 + 80) / 8
    assert costs.objective(choice) == 3.0 + 4.0 + 0.25
    assert costs.usage(choice, Budget.bytes(1)) == costs.storage_bytes(choice)
    assert costs.usage(choice, Budget.avg_bits(1)) == pytest.approx(costs.average_bits(choice))


def test_objective_of_disallowed_choice_is_infinite() -> None:
    assert table().objective(np.array([0, 0, 0])) == np.inf


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (np.array([0, 0]), r"an assignment must be 3 column indices, but got shape \(2,\)"),
        (np.array([0.0, 0.0, 2.0]), r"an assignment must be 3 column indices"),
        (np.array([0, 3, 2]), r"assignment indices must be within 0\.\.2"),
        (np.array([-1, 0, 2]), r"assignment indices must be within 0\.\.2"),
        (np.array([0, 0, 0]), r"picks a bit width that an item does not allow"),
    ],
)
def test_check_choice_errors(choice: np.ndarray, message: str) -> None:
    with pytest.raises(CostTableError, match=message):
        table().check_choice(choice)


def test_with_resources_adds_a_column_and_keeps_the_rest() -> None:
    costs = table(ties=((0, 1),))
    bops = np.arange(9.0).reshape(3, 3)
    more = costs.with_resources(bops=bops)
    np.testing.assert_array_equal(more.resources["bops"], bops)
    np.testing.assert_array_equal(more.cost, costs.cost)
    np.testing.assert_array_equal(more.allowed, costs.allowed)
    assert more.ties == costs.ties and "bops" not in costs.resources


# ---- persistence ------------------------------------------------------------
def full_table() -> CostTable:
    return table(
        ties=((0, 1),),
        resources={"bops": np.array([[1.5, 3.0, 6.0], [0.1, 0.2, 0.30000000000000004], [np.nan, 7.0, 9.0]])},
        quantizer=QuantizerConfig(scheme="affine", group_size=64).to_dict(),
        meta={"model": "tiny", "seed": 3, "float_units": ["head"], "nested": {"x": [1, 2.5]}},
    )


def assert_same_table(a: CostTable, b: CostTable) -> None:
    assert a.items == b.items and a.bits == b.bits and a.ties == b.ties
    np.testing.assert_array_equal(a.allowed, b.allowed)
    np.testing.assert_array_equal(a.n_weights, b.n_weights)
    np.testing.assert_array_equal(a.cost, b.cost)  # +inf where disallowed, on both sides
    np.testing.assert_array_equal(a.storage_bits[a.allowed], b.storage_bits[b.allowed])
    assert sorted(a.resources) == sorted(b.resources)
    for k in a.resources:
        np.testing.assert_array_equal(a.resources[k][a.allowed], b.resources[k][b.allowed])
    assert dict(a.quantizer) == dict(b.quantizer)
    assert dict(a.meta) == dict(b.meta)


def test_save_load_round_trip(tmp_path: Path) -> None:
    costs = full_table()
    path = costs.save(tmp_path / "sub" / "costs.json")
    assert path == tmp_path / "sub" / "costs.json"
    loaded = CostTable.load(path)
    assert_same_table(costs, loaded)
    assert loaded.allowed[2].tolist() == [False, False, True]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["costs.json"]


def test_disallowed_cells_are_written_as_null(tmp_path: Path) -> None:
    doc = json.loads(full_table().save(tmp_path / "c.json").read_text())
    assert doc["format"] == "mpsearch.costtable" and doc["version"] == 1
    assert doc["cost"][2] == [None, None, 0.25]
    assert doc["storage_bits"][2] == [None, None, 80.0]
    assert doc["resources"]["bops"][2] == [None, None, 9.0]


@pytest.mark.parametrize("seed", range(5))
def test_random_tables_round_trip(tmp_path: Path, seed: int) -> None:
    costs = random_table(seed)
    assert_same_table(costs, CostTable.from_dict(json.loads(json.dumps(costs.to_dict()))))
    assert_same_table(costs, CostTable.load(costs.save(tmp_path / "c.json")))


def test_save_is_deterministic(tmp_path: Path) -> None:
    a = full_table().save(tmp_path / "a.json").read_bytes()
    b = full_table().save(tmp_path / "b.json").read_bytes()
    assert a == b


RECOMPUTE = r"Recompute it with `mpsearch sensitivity --out FILE`"


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CostTableError, match=r"a cost table file must be readable, but .*nope\.json' is not: No such file "
                       r"or directory\. Check the path\. " + RECOMPUTE):
        CostTable.load(tmp_path / "nope.json")


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(CostTableError, match=r"must be readable, but .* is not: Is a directory\. Check the path"):
        CostTable.load(tmp_path)


@pytest.mark.parametrize("cut", [1, 10, -2])
def test_load_truncated_file(tmp_path: Path, cut: int) -> None:
    text = full_table().save(tmp_path / "c.json").read_text()
    (tmp_path / "c.json").write_text(text[:cut] if cut >= 0 else text[: len(text) // 2])
    with pytest.raises(CostTableError, match=r"a cost table file must be valid JSON, but .*c\.json' is not: .*cut short.*"
                       + RECOMPUTE):
        CostTable.load(tmp_path / "c.json")


@pytest.mark.parametrize("text", ["", "  \n"])
def test_load_empty_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(CostTableError, match=r"must be valid JSON, but .*c\.json' is empty\. " + RECOMPUTE):
        CostTable.load(tmp_path / "c.json")


def test_load_toml_is_not_json(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text("budget = 3\n")
    with pytest.raises(CostTableError, match=r"must be valid JSON, but .*c\.json' is not: Expecting value.*" + RECOMPUTE):
        CostTable.load(tmp_path / "c.json")


@pytest.mark.parametrize("data", [b"\xff\xfe\x00\x81garbage", b"\x89PNG\r\n\x1a\n", b'{"a": "\x00"}'])
def test_load_binary_garbage(tmp_path: Path, data: bytes) -> None:
    # regression: a non-UTF-8 file used to escape as a raw UnicodeDecodeError
    (tmp_path / "c.json").write_bytes(data)
    with pytest.raises(CostTableError, match=r"a cost table file must be UTF-8 JSON, but .*c\.json' is binary\. " + RECOMPUTE):
        CostTable.load(tmp_path / "c.json")


def valid_doc() -> dict:
    return json.loads(json.dumps(full_table().to_dict()))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(format="mpsearch.bitplan"), r"must have format='mpsearch\.costtable'"),
        (lambda d: d.update(version=2), r"cost table version must be one of \[1\], but got version=2\. Upgrade mpsearch"),
        (lambda d: d.update(version=True), r"version must be one of \[1\], but got version=True"),
        (lambda d: d.pop("items"), r"must have the entries \[.*\], but lacks \['items'\]\. " + RECOMPUTE),
        (lambda d: d.pop("n_weights"), r"but lacks \['n_weights'\]"),
        (lambda d: d.update(items="conv"), r"`items` must be a list of names, but got str 'conv'"),
        (lambda d: d.update(items=["conv", 3, "mid"]), r"item names must be non-empty strings, but item 1 is 3"),
        (lambda d: d.update(items=["a", "a", "c"]), r"item names must be unique, but \['a'\] repeat\. Give each item"),
        (lambda d: d.update(bits="248"), r"`bits` must be a non-empty list of widths, but got '248'"),
        (lambda d: d.update(bits=[4, 4, 8]), r"strictly increasing, but got \(4, 4, 8\)\. Give each width once"),
        (lambda d: d["cost"][0].pop(), r"`cost` rows must have one entry per bit width \(3\), but the row of item 'conv' "
                                       r"has 2 entries\. " + RECOMPUTE),
        (lambda d: d.update(cost=[1, 2, 3]), r"`cost` rows must have one entry per bit width \(3\), but the row of item "
                                             r"'conv' has 1\."),
        (lambda d: d.update(cost=d["cost"][:1]), r"`cost` must have one row per item \(3\), but has 1 row"),
        (lambda d: d["cost"][0].__setitem__(0, "x"), r"`cost` entries must be numbers or null, but item 'conv' has 'x' at "
                                                     r"column 0\. " + RECOMPUTE),
        (lambda d: d["cost"][0].__setitem__(0, True), r"`cost` entries must be numbers or null, but item 'conv' has True"),
        (lambda d: d["storage_bits"][0].__setitem__(0, None), r"`storage_bits` must be a number wherever `cost` is, but "
                                                              r"item 'conv' has null at column 0"),
        (lambda d: d["cost"][1].__setitem__(1, -1.0), r"`cost` must be finite and non-negative .* item 'mid'"),
        (lambda d: d.update(n_weights=[1, 2]), r"`n_weights` must be 3 positive integers, but got shape \(2,\)\. Give each"),
        (lambda d: d.update(n_weights=[0, 2, 3]), r"`n_weights` must be 3 positive integers, but item 'conv' has 0\. Give"),
        (lambda d: d.update(n_weights=[1.5, 2, 3]), r"`n_weights` must be a list of integers"),
        (lambda d: d.update(ties=[[0, 7]]), r"tie indices must be within 0\.\.2, but got 7\. Give 0-based item indices"),
        (lambda d: d.update(ties=[0, 1]), r"`ties` must be lists of item indices, but got \[0, 1\]"),
        (lambda d: d.update(resources={"lat": [[1.0]]}), r"`resources\['lat'\]` must have one row per item \(3\)"),
        (lambda d: d.update(resources=[1]), r"`resources` must be an object of kind -> matrix"),
        (lambda d: d.update(meta=5), r"cost table `meta` must be a JSON object, but got int 5\. Replace it with \{\}"),
        (lambda d: d.update(quantizer=[]), r"cost table `quantizer` must be a JSON object, but got list"),
        (lambda d: d["meta"].update(float_units=5), r"meta `float_units` must be a list of unit names, but got 5\. Fix"),
        (lambda d: d["meta"].update(float_units=["mid"]), r"cannot also be searched, but \['mid'\] are both\. Remove"),
        (lambda d: d.update(items={"units": ["a"], "counts": ["3"]}), r"`items\.counts` must be a list of integers"),
        (lambda d: d.update(items={"units": ["a", "b"], "counts": [2, 0]}), r"group index units need positive group counts, but 'b' "
                                                                          r"has 0"),
    ],
)
def test_from_dict_malformed(mutate, message: str) -> None:
    doc = valid_doc()
    mutate(doc)
    with pytest.raises(CostTableError, match=message):
        CostTable.from_dict(doc)


def test_from_dict_bad_bits_keeps_the_specific_error() -> None:
    doc = valid_doc()
    doc["bits"] = [2, 4, 9]
    with pytest.raises(BitsOutOfRangeError, match=r"cost table bits must be integers within 1\.\.8, but got \(2, 4, 9\)"):
        CostTable.from_dict(doc)


@pytest.mark.parametrize("doc", [[], None, "mpsearch.costtable", 3])
def test_from_dict_not_an_object(doc: object) -> None:
    with pytest.raises(CostTableError, match=r"a cost table document must be a JSON object with format='mpsearch\.costtable', "
                       r"but got " + type(doc).__name__ + ".*" + RECOMPUTE):
        CostTable.from_dict(doc)


def test_load_valid_json_with_wrong_content(tmp_path: Path) -> None:
    (tmp_path / "c.json").write_text('{"format": "mpsearch.costtable", "version": 1, "items": ["a"]}')
    with pytest.raises(CostTableError, match=r"lacks \['bits', 'cost', 'storage_bits', 'n_weights'\]"):
        CostTable.load(tmp_path / "c.json")


# ---- plans ------------------------------------------------------------------
def test_plan_and_choice_of_round_trip() -> None:
    costs = full_table()
    for choice in ([0, 0, 2], [1, 1, 2], [2, 2, 2]):
        plan = costs.plan(np.array(choice), solver="manual")
        assert isinstance(plan, BitPlan)
        np.testing.assert_array_equal(costs.choice_of(plan), choice)
        np.testing.assert_array_equal(costs.choice_of(BitPlan.from_json(plan.to_json())), choice)


def test_plan_contents() -> None:
    costs = full_table()
    plan = costs.plan(np.array([0, 0, 2]), solver="manual")
    # float_units from the meta are kept in floating point (16) and removed from the plan meta
    assert plan.bits == {"conv": 2, "fc": 8, "head": 16, "mid": 2}
    assert plan.quantizer == QuantizerConfig(scheme="affine", group_size=64)
    assert plan.meta == {"model": "tiny", "seed": 3, "nested": {"x": [1, 2.5]}, "solver": "manual"}


def test_plan_rejects_invalid_choice() -> None:
    with pytest.raises(CostTableError, match="picks a bit width that an item does not allow"):
        table().plan(np.array([0, 0, 0]))


def test_choice_of_missing_item() -> None:
    with pytest.raises(PlanMismatchError, match=r"must name every item of the cost table, but misses \['mid'\]"):
        table().choice_of(BitPlan(bits={"conv": 2, "fc": 8}))


def test_choice_of_bits_not_in_table() -> None:
    with pytest.raises(CostTableError, match=r"assignment indices must be within 0\.\.2"):
        table().choice_of(BitPlan(bits={"conv": 3, "mid": 2, "fc": 8}))
