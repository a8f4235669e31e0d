"""GGUF export: names, types with fallbacks, the tensor-type file, and (slow, needs a llama.cpp build) llama-quantize."""

from __future__ import annotations

import re

import pytest

from mpsearch.core.errors import MissingDependencyError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy import llamacpp
from mpsearch.deploy.gguf_export import GGUF_TYPES, gguf_name, gguf_types, read_gguf_types, tensor_type_file


def test_names():
    assert gguf_name("model.layers.11.self_attn.q_proj") == "blk.11.attn_q.weight"
    assert gguf_name("model.layers.0.mlp.down_proj") == "blk.0.ffn_down.weight"
    assert gguf_name("model.embed_tokens") == "token_embd.weight"
    with pytest.raises(PlanMismatchError, match="Llama"):
        gguf_name("encoder.layer.0.attention")


def test_types_fall_back_without_lowering_precision():
    units = {"model.layers.0.mlp.down_proj": 1536, "model.layers.0.mlp.up_proj": 576, "model.layers.0.self_attn.q_proj": 40}
    for width in (2, 3, 4, 5, 6, 8):
        plan = BitPlan(bits=dict.fromkeys(units, width))
        types, changes = gguf_types(plan, units)
        assert GGUF_TYPES[types["blk.0.ffn_down.weight"]].block == 256 or width == 8
        up = GGUF_TYPES[types["blk.0.ffn_up.weight"]]
        assert up.block == 32 and up.bpw >= GGUF_TYPES[types["blk.0.ffn_down.weight"]].bpw - 1e-9
        assert types["blk.0.attn_q.weight"] == "f16"  # 40 is no multiple of 32
        assert {c.tensor for c in changes} == {"blk.0.ffn_up.weight", "blk.0.attn_q.weight"} or width == 8


def test_tensor_type_file_anchors_names():
    text = tensor_type_file({"blk.1.attn_q.weight": "q4_K", "blk.11.attn_q.weight": "q8_0"})
    entries = dict(line.split("=") for line in text.split())
    hits = [t for t in ("blk.1.attn_q.weight", "blk.11.attn_q.weight") for p in entries if re.search(p, t)]
    assert hits == ["blk.1.attn_q.weight", "blk.11.attn_q.weight"]  # each name caught by its own entry only


def _tools():
    try:
        return llamacpp.find_tools()
    except MissingDependencyError:
        pytest.skip("no llama.cpp build (set MPSEARCH_LLAMACPP_BIN or run llamacpp.build_tools())")


@pytest.mark.slow
def test_llama_quantize_writes_the_planned_types(tmp_path):
    pytest.importorskip("gguf")
    _tools()
    from mpsearch.zoo.llm import smollm2_gguf

    try:
        source = smollm2_gguf()
    except Exception:
        pytest.skip("SmolLM2 GGUF not installed")
    rows = {}
    for i in range(30):
        for proj, n in (("self_attn.q_proj", 576), ("self_attn.k_proj", 576), ("self_attn.v_proj", 576),
                        ("self_attn.o_proj", 576), ("mlp.gate_proj", 576), ("mlp.up_proj", 576), ("mlp.down_proj", 1536)):
            rows[f"model.layers.{i}.{proj}"] = n
    plan = BitPlan(bits={u: (2, 3, 4, 5, 6, 8)[k % 6] for k, u in enumerate(rows)})
    types, _ = gguf_types(plan, rows)
    (tmp_path / "types.txt").write_text(tensor_type_file(types))
    llamacpp.quantize(source, tmp_path / "mix.gguf", "Q8_0", tensor_type_file=tmp_path / "types.txt")
    got = read_gguf_types(tmp_path / "mix.gguf")
    assert {t: got[t] for t in types} == types
