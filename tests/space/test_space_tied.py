"""A weight shared by lm_head and the token embedding is one unit; embeddings are optional units;
q/k/v and gate/up can be tied for runtimes (mpsearch/space/units.py, discover.py, fused.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mpsearch.core.errors import FloatModulesWarning, PlanMismatchError, SearchSpaceError
from mpsearch.core.plan import BitPlan
from mpsearch.space.discover import discover, discover_quietly
from mpsearch.space.fused import fused_ties
from mpsearch.space.units import check_plan_for_model, scan_model

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder


def _matrices(model: nn.Module) -> int:
    """Weights of every distinct 2-D+ parameter (a shared one once)."""
    return sum(p.numel() for p in model.parameters() if p.dim() >= 2)


def test_tied_lm_head_is_one_unit_covering_the_embedding_counted_once() -> None:
    model = tiny_decoder(tied=True)
    with pytest.warns(FloatModulesWarning) as record:
        space = discover(model)
    head = space.unit("lm_head")
    assert head.tied == ("model.embed_tokens",) and head.role == "layer" and head.kind == "linear"
    assert "model.embed_tokens" not in space.names
    assert space.float_modules == ()  # the embedding is quantized with lm_head, not left in float
    assert space.n_weights == _matrices(model)  # 53,952: the shared 260 x 48 table counted once
    message = str(record[0].message)
    assert "the weight of 'lm_head' (12,480 weights) is also read by 'model.embed_tokens'" in message
    assert "cannot be quantized" not in message
    assert "is also read by 'model.embed_tokens'" in space.describe()


def test_untied_embedding_is_float_by_default_and_a_unit_on_request() -> None:
    model = tiny_decoder(tied=False)
    with pytest.warns(FloatModulesWarning, match=r"'model.embed_tokens' \(Embedding, 12,480 weights: embedding tables "
                                                 r"are searched only with discover\(\.\.\., embeddings=True\)\)"):
        default = discover(model)
    assert "model.embed_tokens" not in default.names and default.unit("lm_head").tied == ()
    assert default.n_weights + sum(f.n_weights for f in default.float_modules) == _matrices(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing stays float, nothing is tied: no notice
        space = discover(model, embeddings=True)
    table = space.unit("model.embed_tokens")
    assert (table.role, table.kind, table.out_features, table.fan_in) == ("embedding", "linear", 260, 48)
    assert space.names[0] == "model.embed_tokens" and table.bits == (8,)  # first unit: pinned like a first conv
    assert space.n_weights == _matrices(model)


def test_tied_pair_with_embeddings_searched_is_still_one_unit() -> None:
    model = tiny_decoder(tied=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # searching embeddings: the tie is no surprise, so no warning
        space = discover(model, embeddings=True, pin_first_last=None)
    assert space.names.count("lm_head") == 1 and "model.embed_tokens" not in space.names
    assert space.n_weights == _matrices(model)


def test_patterns_see_tied_names_and_exclusion_keeps_both_float() -> None:
    model = tiny_decoder(tied=True)
    assert discover_quietly(model, pin_first_last=None, pins={"model.embed_tokens": 3}).unit("lm_head").bits == (3,)
    space = discover_quietly(model, exclude=["lm_head"])
    assert "lm_head" in space.float_units and "lm_head" not in space.names


class _Scaled(nn.Embedding):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # as Gemma scales its embedding
        return super().forward(ids) * 2.0


class _TiedScaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = _Scaled(20, 8)
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.embed.weight


def test_a_tie_packed_modules_cannot_serve_stays_float_once_with_the_reason() -> None:
    units, floats = scan_model(_TiedScaled(), embeddings=True)
    assert [u.name for u in units] == ["mid"]
    assert len(floats) == 1 and floats[0].name == "head" and floats[0].n_weights == 160
    assert "'embed': _Scaled has its own forward" in floats[0].reason and "counted once" in floats[0].reason


def test_plans_may_name_embeddings_but_not_tied_modules() -> None:
    untied, tied = tiny_decoder(tied=False), tiny_decoder(tied=True)
    names = discover_quietly(untied).names
    check_plan_for_model(BitPlan(bits={n: 4 for n in names}), untied)  # the embedding is optional
    check_plan_for_model(BitPlan(bits={**{n: 4 for n in names}, "model.embed_tokens": 4}), untied)
    with pytest.raises(PlanMismatchError, match=r"names tied modules \('model.embed_tokens' shares the weight of 'lm_head'\)"):
        check_plan_for_model(BitPlan(bits={**{n: 4 for n in names}, "model.embed_tokens": 4}), tied)


def test_fused_siblings_are_tied_per_block() -> None:
    model = tiny_decoder(tied=True, layers=2)
    space = discover_quietly(model, tie_fused=True, pin_first_last=None)
    assert space.ties == (
        ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"),
        ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"),
        ("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"),
        ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"),
    )
    assert discover_quietly(model).ties == ()
    # a member left out of the space leaves the others tied
    partial = discover_quietly(model, tie_fused=True, exclude=["*.q_proj"])
    assert ("model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj") in partial.ties
    assert fused_ties(["a.query", "a.key", "a.value", "b.query"]) == [("a.query", "a.key", "a.value")]
    with pytest.raises(SearchSpaceError, match="tied units must share at least one bit choice"):
        discover_quietly(model, tie_fused=True, pin_first_last=None,
                         pins={"model.layers.0.self_attn.q_proj": 2, "model.layers.0.self_attn.k_proj": 3})


def test_fused_ties_reach_the_cost_table() -> None:
    from mpsearch.pricing.tables import cost_table_from_space

    space = discover_quietly(tiny_decoder(tied=True, layers=1), tie_fused=True, pin_first_last=None)
    costs = cost_table_from_space(space, {u.name: {b: 1.0 / b for b in u.bits} for u in space.units})
    assert [[costs.items[i] for i in tie] for tie in costs.ties] == [list(t) for t in space.ties]


def test_a_plan_from_patterns_fits_the_model_and_reaches_tied_units() -> None:
    from mpsearch.core.plan_build import plan_from_assignment

    model = tiny_decoder(tied=True)
    space = discover_quietly(model, tie_fused=True)  # first and last unit pinned at 8
    plan = plan_from_assignment(space, {"model.layers.*.mlp.*": 4, "model.layers.1.self_attn.*": 3})
    check_plan_for_model(plan, model)
    assert plan.bits["lm_head"] == 8 and plan.bits["model.layers.0.self_attn.o_proj"] == 16
    assert plan.bits["model.layers.1.self_attn.q_proj"] == 3 and plan.pins["model.layers.0.self_attn.q_proj"] == 8
    with pytest.raises(PlanMismatchError, match=r"pinned units keep their pin, but the assignment moves \['lm_head'\]"):
        plan_from_assignment(space, {"model.embed_tokens": 4})  # the tied name reaches lm_head
    assert plan.bits["model.layers.0.self_attn.v_proj"] == 8  # follows the pinned q_proj it is tied to
    assert plan_from_assignment(space, {"*.1.self_attn.q_proj": 4}).bits["model.layers.1.self_attn.k_proj"] == 4
    with pytest.raises(PlanMismatchError, match=r"tied units must share a width, but \['model.layers.1.self_attn.q_proj'"):
        plan_from_assignment(space, {"*.1.self_attn.q_proj": 4, "*.1.self_attn.k_proj": 3})
