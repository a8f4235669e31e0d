"""Modules with weights that cannot be quantized are listed with the reason, stay in floating point,
and the user is told once (mpsearch/space/discover.py: SearchSpace.float_modules, FloatModulesWarning)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.core.costs import CostTable
from mpsearch.core.errors import FloatModulesWarning, MPSearchError
from mpsearch.pricing.tables import cost_table_from_space
from mpsearch.space.discover import discover, discover_quietly, float_notice_of


class Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 8)
        self.conv1d = nn.Conv1d(8, 8, 3)
        self.up = nn.ConvTranspose2d(8, 4, 2)
        self.conv = nn.Conv2d(4, 4, 3, groups=2)  # grouped: searched (fake-quant handles it)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)
        self.pos = nn.Parameter(torch.zeros(1, 8, 8))  # a bare matrix on the root module


def test_unquantizable_modules_are_listed_with_the_reason() -> None:
    with pytest.warns(FloatModulesWarning) as record:
        space = discover(Mixed())
    assert space.names == ("conv", "fc")
    listed = {m.name: (m.kind, m.n_weights, m.reason) for m in space.float_modules}
    assert listed == {
        "(root)": ("Mixed", 64, "only Conv2d, Linear and Conv1D layers are quantized"),
        "embed": ("Embedding", 800, "embedding tables are searched only with discover(..., embeddings=True)"),
        "conv1d": ("Conv1d", 192, "only 2-D convolutions are supported"),
        "up": ("ConvTranspose2d", 128, "transposed convolutions are not supported"),
    }  # norms (1-D scales) and biases are not searched by design and not listed
    message = str(record[0].message)
    assert message.startswith("4 module(s) of Mixed cannot be quantized and stay in floating point (1,184 weights, ")
    assert "'embed' (Embedding, 800 weights: embedding tables are searched only with discover(..., embeddings=True))" in message
    assert message.endswith("Plans leave them untouched; bit budgets cover only the searched units.")
    assert record[0].filename == __file__  # points at the caller's discover() line


def test_describe_and_quiet_discovery() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither call warns: the first is quiet, the second has nothing to say
        space = discover_quietly(Mixed(), include=["conv"])
        plain = discover(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2)))
    lines = space.describe().splitlines()
    assert lines[0] == "1 units, 72 weights searched (1 pinned)"  # the grouped conv: 4 x 2 x 3 x 3
    assert lines[1] == "1 quantizable unit(s) left out by include/exclude stay in floating point: 'fc'"
    assert lines[2].startswith("4 module(s) of Mixed cannot be quantized")
    assert plain.float_modules == () and plain.float_notice() is None and len(plain.describe().splitlines()) == 1


def test_cost_tables_and_plans_keep_the_list(tmp_path) -> None:
    space = discover_quietly(Mixed(), pin_first_last=None)
    costs = cost_table_from_space(space, {u.name: {b: 2.0 ** -b for b in u.bits} for u in space.units},
                                  meta={"model": "mixed"})
    costs.save(tmp_path / "c.json")
    loaded = CostTable.load(tmp_path / "c.json")
    assert [m["name"] for m in loaded.meta["float_modules"]] == ["(root)", "embed", "conv1d", "up"]
    assert float_notice_of(loaded).startswith("4 module(s) of mixed cannot be quantized")
    plan = loaded.plan(loaded.uniform_choice(4))
    assert set(plan.bits) == {"conv", "fc"}  # they are not units: the plan leaves them alone
    resnet_like = cost_table_from_space(discover(nn.Sequential(nn.Linear(4, 4))), {"0": {8: 0.0}})
    assert "float_modules" not in resnet_like.meta and float_notice_of(resnet_like) is None


def test_cli_search_names_them(tmp_path, capsys) -> None:
    from mpsearch.cli.main import main

    space = discover_quietly(Mixed(), pin_first_last=None)
    costs = cost_table_from_space(space, {u.name: {b: float(np.exp(-b)) for b in u.bits} for u in space.units})
    costs.save(tmp_path / "c.json")
    assert main(["search", "--costs", str(tmp_path / "c.json"), "--budget", "6", "--out", str(tmp_path / "p.json")]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: 4 module(s) of the model cannot be quantized and stay in floating point")


def test_minilm_embeddings_stay_in_floating_point() -> None:
    pytest.importorskip("transformers")
    from mpsearch.zoo import load_minilm

    try:
        model = load_minilm()[0]
    except (MPSearchError, OSError) as err:  # the weights are optional assets
        pytest.skip(f"MiniLM not available: {err}")
    with pytest.warns(FloatModulesWarning, match=r"3 module\(s\) of BertModel cannot be quantized"):
        space = discover(model)
    assert [m.name for m in space.float_modules] == [
        "embeddings.word_embeddings", "embeddings.position_embeddings", "embeddings.token_type_embeddings"]
    assert sum(m.n_weights for m in space.float_modules) == 30522 * 384 + 512 * 384 + 2 * 384
    assert all(m.kind == "Embedding" for m in space.float_modules)
