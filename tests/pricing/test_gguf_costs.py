"""GGUF type cost tables: exact weighted errors, the table's menus and sizes, solves against brute force,
and the sampled Fisher as a KL estimate on a tiny decoder."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mpsearch.core.budget import Budget
from mpsearch.core.errors import CostTableError, DataError
from mpsearch.core.gguf_types import GGUF_TYPES, type_for
from mpsearch.pricing.gguf_costs import gguf_type_table, mix_cost, sampled_fisher, weighted_error
from mpsearch.solvers import get_solver
from mpsearch.zoo.llm import tiny_decoder

ROWS = {"model.layers.0.mlp.down_proj": 1536, "model.layers.0.mlp.up_proj": 576, "model.embed_tokens": 576}
SIZES = {"model.layers.0.mlp.down_proj": 576 * 1536, "model.layers.0.mlp.up_proj": 1536 * 576, "model.embed_tokens": 100 * 576}
BPW_ERROR = {k: 4.0 ** -t.bpw for k, t in GGUF_TYPES.items()}  # error falling with size


def errors(seed=0):
    rng = np.random.default_rng(seed)
    return {u: {k: e * rng.uniform(0.5, 2) * SIZES[u] for k, e in BPW_ERROR.items()} for u in ROWS}


def test_weighted_error_is_the_weighted_sum_of_squares():
    rng = np.random.default_rng(0)
    w, r, s = rng.normal(size=(7, 5)), rng.normal(size=(7, 5)), rng.uniform(size=(7, 5))
    assert weighted_error(w, r, s) == pytest.approx(float((s * (r - w) ** 2).sum()), rel=1e-12)
    assert weighted_error(w, r, s[0]) == pytest.approx(float((s[0] * (r - w) ** 2).sum()), rel=1e-12)
    with pytest.raises(CostTableError, match="layout"):
        weighted_error(w, r[:, :4], s)


def test_table_prices_each_type_a_tensor_can_take():
    errs = errors()
    table = gguf_type_table(errs, ROWS, SIZES)
    assert table.bits == (2, 3, 4, 5, 6, 8)
    for i, unit in enumerate(table.items):
        for j, width in enumerate(table.bits):
            kind = table.meta["gguf_types"][unit].get(str(width))
            assert table.allowed[i, j] == (kind is not None)
            if kind is not None:
                assert kind == type_for(width, ROWS[unit])
                assert table.cost[i, j] == pytest.approx(0.5 * errs[unit][kind])
                assert table.storage_bits[i, j] == SIZES[unit] * GGUF_TYPES[kind].bpw
    assert table.allowed[0].sum() == 6 and table.allowed[1].sum() == 3  # k-quants only where 256 divides the row


def test_solved_mix_is_the_brute_force_optimum_and_maps_back_to_its_types():
    errs = errors(1)
    table = gguf_type_table(errs, ROWS, SIZES)
    menus = {u: table.meta["gguf_types"][u] for u in ROWS}
    for budget in (0.85e6, 0.95e6, 1.1e6, 1.6e6):
        best = min((sum(errs[u][k] for u, k in zip(ROWS, combo)), combo)
                   for combo in itertools.product(*(m.values() for m in menus.values()))
                   if sum(SIZES[u] * GGUF_TYPES[k].bpw / 8 for u, k in zip(ROWS, combo)) <= budget)
        result = get_solver("ilp").solve(table, Budget.bytes(budget))
        plan = table.plan(result.choice)
        types = {u: type_for(plan.bits[u], ROWS[u]) for u in ROWS}
        assert tuple(types.values()) == best[1]
        assert mix_cost(errs, types) == pytest.approx(0.5 * best[0])


def test_missing_measurements_are_refused():
    errs = errors()
    del errs["model.layers.0.mlp.up_proj"]["q5_0"]
    with pytest.raises(CostTableError, match="q5_0"):
        gguf_type_table(errs, ROWS, SIZES)
    with pytest.raises(CostTableError, match="measured"):
        mix_cost(errs, {"model.layers.0.mlp.up_proj": "q5_0"})


def test_sampled_fisher_predicts_the_kl_of_a_small_weight_change():
    torch.manual_seed(0)
    model = tiny_decoder(seed=0)
    windows = torch.randint(0, model.config.vocab_size, (48, 24))
    params = {n: p for n, p in model.named_parameters() if p.ndim == 2}
    fisher = sampled_fisher(model, windows, params, seed=1)
    assert all(f.shape == params[n].shape and (f >= 0).all() for n, f in fisher.items())
    with torch.no_grad():
        before = torch.log_softmax(model(windows).logits[:, :-1].double(), -1)
        noise = {n: 0.01 * p.abs().mean() * torch.randn_like(p) for n, p in params.items()}
        for n, p in params.items():
            p.add_(noise[n])
        after = torch.log_softmax(model(windows).logits[:, :-1].double(), -1)
    kl = float((before.exp() * (before - after)).sum(-1).mean())
    predicted = 0.5 * sum(float((fisher[n] * noise[n].double() ** 2).sum()) for n in params)
    assert predicted == pytest.approx(kl, rel=0.35)


def test_sampled_fisher_refuses_non_token_windows():
    with pytest.raises(DataError, match="int64"):
        sampled_fisher(tiny_decoder(), torch.zeros(2, 8), {})
