"""Tests for the cost-table document (mpsearch/core/costs_io.py): round trips, and that any damage to a
valid document is either refused with an MPSearchError or reads back as a valid, self-consistent table."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest

from mpsearch.core.costs import CostTable, GroupIndex
from mpsearch.core.costs_io import FORMAT, VERSION, table_document, table_fields
from mpsearch.core.errors import CostTableError, MPSearchError


def valid_doc() -> dict:
    table = CostTable(
        items=("a", "b", "c"), bits=(2, 4, 8),
        cost=np.array([[3.0, 1.0, 0.1], [5.0, 2.0, 0.2], [np.nan, np.nan, 0.0]]),
        storage_bits=np.array([[20.0, 40.0, 80.0], [40.0, 80.0, 160.0], [np.nan, np.nan, 8.0]]),
        n_weights=np.array([10, 20, 1]), allowed=np.array([[1, 1, 1], [1, 1, 1], [0, 0, 1]], bool),
        ties=((0, 1),), resources={"bops": np.array([[1.0, 2.0, 4.0], [2.0, 4.0, 8.0], [0.0, 0.0, 1.0]])},
        quantizer={"scheme": "affine"}, meta={"model": "tiny"},
    )
    return json.loads(json.dumps(table.to_dict()))


def test_document_round_trip_is_exact() -> None:
    doc = valid_doc()
    assert doc["format"] == FORMAT and doc["version"] == VERSION
    assert table_document(CostTable(**table_fields(doc))) == doc


def test_group_table_round_trip() -> None:
    items = GroupIndex(("fc1", "fc2"), (3, 2))
    table = CostTable(items=items, bits=(2, 4), cost=np.ones((5, 2)), storage_bits=np.full((5, 2), 8.0),
                      n_weights=np.full(5, 4))
    back = CostTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert back.items == items and back.to_dict() == table.to_dict()


def test_a_null_storage_where_a_cost_is_given_is_refused() -> None:
    """It used to read as 0 bits: a free width that no budget could see."""
    doc = valid_doc()
    doc["storage_bits"][1][0] = None
    with pytest.raises(CostTableError, match=r"`storage_bits` must be a number wherever `cost` is, but item 'b' has null"):
        CostTable.from_dict(doc)


NASTY = [None, True, False, 0, -1, 1.5, 1e308, 10**30, "", "x", "2", [], [None], [[]], [1, 2], {}, {"units": ["a"]},
         [[1.0, 2.0, 3.0]], [0, 1], [[0, 9]], [["a"]], {"bops": 1}, {"bops": [[1.0]]}]


def _containers(node: object, path: tuple = ()) -> list[tuple]:
    """Every (container path) in a JSON tree: each is a place a mutation can hit."""
    found = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _containers(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _containers(value, (*path, i))
    return found


def _mutate(doc: dict, rng: random.Random) -> dict:
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_containers(doc)[1:])
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if rng.random() < 0.2 and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = copy.deepcopy(rng.choice(NASTY))
        if not isinstance(doc, dict):
            break
    return doc


@pytest.mark.parametrize("seed", range(4))
def test_damaged_documents_are_refused_or_valid(seed: int) -> None:
    """1,500 random edits anywhere in a valid document: only MPSearchErrors, and what loads is sound."""
    rng = random.Random(seed)
    base = valid_doc()
    outcomes = {"refused": 0, "loaded": 0}
    for _ in range(1500):
        doc = _mutate(base, rng)
        try:
            table = CostTable.from_dict(doc)
        except MPSearchError as err:
            text = str(err)
            assert "Error(" not in text and "Traceback" not in text, text  # a rule, never a raw exception repr
            outcomes["refused"] += 1
            continue
        outcomes["loaded"] += 1
        assert np.isfinite(table.cost[table.allowed]).all() and (table.cost[table.allowed] >= 0).all()
        assert table.allowed.any(axis=1).all() and (table.n_weights > 0).all()
        assert isinstance(table.meta, dict) and isinstance(table.quantizer, dict)
        assert CostTable.from_dict(json.loads(json.dumps(table.to_dict()))).to_dict() == table.to_dict()
    assert outcomes["refused"] > 1000 and outcomes["loaded"] > 10, outcomes
