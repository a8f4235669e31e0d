"""Token windows of a causal language model: their rules, and the model's validated next-token logits.

Calibration (:meth:`~mpsearch.sensitivity.Calibration.causal_lm`, the next-token loss) and the
language-model metrics (:mod:`mpsearch.deploy.lm_metrics`) read the same int64 (windows, tokens)
tensors and the same (windows, tokens, vocab) logits, so both check them here, with one set of
messages.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mpsearch.core.errors import DataError
from mpsearch.space.forward import batch_output

__all__ = ["causal_lm_logits", "check_token_windows"]


def check_token_windows(windows: Any, batch_size: Any) -> None:
    """Refuse anything but >= 1 int64 windows of >= 2 non-negative token ids, and a positive ``batch_size``.

    The rules come in the order a user would fix them.
    """
    if not isinstance(windows, torch.Tensor) or windows.dtype != torch.int64 or windows.ndim != 2:
        got = f"{tuple(windows.shape)} {str(windows.dtype).replace('torch.', '')}" if isinstance(windows, torch.Tensor) \
            else type(windows).__name__
        raise DataError(f"token windows must be an int64 tensor (windows, tokens), but got {got}. "
                        "Make them with mpsearch.zoo.text.text_windows, or convert with torch.as_tensor(ids).long().")
    if len(windows) == 0 or windows.shape[1] < 2:
        raise DataError(f"token windows must be at least one window of at least 2 tokens, but got shape {tuple(windows.shape)}. "
                        "Pass more text or a larger seq_len, e.g. text_windows(tokenizer, texts, seq_len=256, n=32).")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DataError(f"`batch_size` must be an integer of at least 1, but got {batch_size!r}. Pass e.g. 4.")
    if bool((windows < 0).any()):
        raise DataError(f"token ids must be >= 0, but got {int(windows.min())}. Pass the ids the tokenizer gives.")


def causal_lm_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The (windows, tokens, vocab) logits of a batch of token windows, in the model's dtype.

    Ids beyond the model's vocabulary (when it exposes its input embeddings) and outputs of any
    other shape are a :class:`DataError`, not an index error deep inside the model.
    """
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    if vocab is not None and int(ids.max()) >= vocab:
        raise DataError(f"token ids must be below the model's vocabulary of {vocab}, but got {int(ids.max())}. "
                        "Tokenize the text with this model's own tokenizer.")
    logits = batch_output(model, ids)
    if logits.ndim != 3 or logits.shape[:2] != ids.shape:
        raise DataError(f"a causal LM must give (windows, tokens, vocab) logits, but {type(model).__name__} gives "
                        f"{tuple(logits.shape)} for token windows {tuple(ids.shape)}. "
                        "Pass a causal LM (e.g. AutoModelForCausalLM).")
    return logits
