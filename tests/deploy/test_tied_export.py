"""Exporting a tied unit: GGUF gives token_embd.weight the unit's type (no output.weight); the
compressed-tensors targets keep a tied lm_head in float, and refuse a quantized one clearly."""

from __future__ import annotations

import pytest

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.export_check import check_export
from mpsearch.deploy.gguf_export import gguf_name, gguf_types

PLAN = BitPlan(bits={"model.layers.0.self_attn.q_proj": 4, "model.layers.0.mlp.down_proj": 3, "lm_head": 6})
ROWS = {"model.layers.0.self_attn.q_proj": 512, "model.layers.0.mlp.down_proj": 1536, "lm_head": 512}


def test_gguf_writes_a_tied_lm_head_as_the_token_embedding() -> None:
    types, _ = gguf_types(PLAN, ROWS, tied=True)
    assert types["token_embd.weight"] == "q6_K" and "output.weight" not in types
    assert gguf_types(PLAN, ROWS)[0]["output.weight"] == "q6_K"  # untied: its own tensor
    assert gguf_name("lm_head", tied=True) == "token_embd.weight" and gguf_name("lm_head") == "output.weight"
    both = BitPlan(bits={**PLAN.bits, "model.embed_tokens": 4})
    with pytest.raises(PlanMismatchError, match="both name 'token_embd.weight'"):
        gguf_types(both, {**ROWS, "model.embed_tokens": 512}, tied=True)


@pytest.mark.parametrize("target", ["compressed-tensors", "vllm"])
def test_compressed_tensors_targets_keep_a_tied_lm_head_in_float(target: str) -> None:
    plan = BitPlan(bits={**PLAN.bits, "lm_head": 4, "model.layers.0.mlp.down_proj": 4})
    check = check_export(plan, target, tied=["lm_head"])
    assert check.plan.bits["lm_head"] == 16 and [c.unit for c in check.changes] == ["lm_head"]
    assert "token embedding's, which" in check.changes[0].reason
    assert check_export(plan, target).plan.bits["lm_head"] == 4  # untied: quantized as planned
    assert check_export(plan, "gguf", tied=["lm_head"]).plan.bits["lm_head"] == 4
    with pytest.raises(PlanMismatchError, match=r"lm_head: 4 -> 16 \(its weight is the token embedding's"):
        check_export(plan, target, tied=["lm_head"], allow_changes=False)


def test_compressed_tensors_export_refuses_a_quantized_tied_lm_head(tmp_path) -> None:
    pytest.importorskip("transformers")
    from mpsearch.deploy.compressed_tensors_export import export_compressed_tensors
    from mpsearch.space.discover import discover_quietly
    from mpsearch.zoo.llm import tiny_decoder

    model = tiny_decoder(tied=True)
    plan = BitPlan(bits={n: 4 for n in discover_quietly(model).names}, quantizer=QuantizerConfig())
    with pytest.raises(PlanMismatchError, match=r"must fit compressed-tensors unchanged.*lm_head: 4 -> 16"):
        export_compressed_tensors(model, plan, tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
