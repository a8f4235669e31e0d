"""Running a model on one calibration batch, whatever the batch holds.

The estimators of this package see three kinds of batches: ``(inputs, labels)``
tuples for classifiers (CIFAR ResNets, plain ``nn.Sequential``), tokenizer
outputs (a mapping with ``input_ids`` and ``attention_mask``) for sentence
encoders such as MiniLM, and int64 (B, T) token windows for causal language
models. :func:`batch_output` turns each into one tensor: logits for a
classifier, the mean-pooled (not yet normalised) sentence embedding for an
encoder, pooled over real tokens as :func:`mpsearch.zoo.embed_sentences` does,
and the (B, T, vocab) next-token logits for a causal LM (its output's ``logits``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mpsearch.core.errors import DataError

MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def batch_inputs(batch: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional and keyword arguments of the model call for one batch."""
    if isinstance(batch, Mapping):  # extra keys (e.g. distillation targets) are not model inputs
        return (), {k: v for k, v in batch.items() if k in MODEL_KEYS}
    if isinstance(batch, (tuple, list)) and batch:
        return (batch[0],), {}
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    raise DataError(
        f"a calibration batch must be an (inputs, labels) pair, a tensor or a tokenizer mapping, "
        f"but got {type(batch).__name__}. Build it with Calibration.classification, Calibration.from_inputs or minilm_calibration."
    )


def batch_labels(batch: Any) -> torch.Tensor | None:
    """The labels of an ``(inputs, labels)`` batch, else None."""
    if isinstance(batch, (tuple, list)) and len(batch) > 1 and isinstance(batch[1], torch.Tensor):
        return batch[1]
    return None


def token_mask(batch: Any) -> torch.Tensor | None:
    """The (B, T) attention mask of a tokenizer batch, else None."""
    if isinstance(batch, Mapping) and "attention_mask" in batch:
        return batch["attention_mask"]
    return None


def pooled(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of token states over real tokens: (B, T, H) -> (B, H)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def batch_output(model: nn.Module, batch: Any) -> torch.Tensor:
    """Logits (classifier, causal LM) or mean-pooled sentence embedding (encoder) of one batch."""
    args, kwargs = batch_inputs(batch)
    out = model(*args, **kwargs)
    logits = getattr(out, "logits", None)  # transformers outputs of LM and classification heads
    if isinstance(logits, torch.Tensor):
        return logits
    hidden = getattr(out, "last_hidden_state", None)
    if hidden is not None:
        return pooled(hidden, token_mask(batch))
    if not isinstance(out, torch.Tensor):
        raise DataError(
            f"the model must return a tensor or an output with `logits` or `last_hidden_state`, but returned "
            f"{type(out).__name__}. Wrap the model so it returns logits."
        )
    return out


def is_token_batch(batch: Any) -> bool:
    """True for causal-LM token windows: an int64 (B, T) tensor of token ids."""
    return isinstance(batch, torch.Tensor) and batch.dtype == torch.int64 and batch.ndim == 2


def is_encoder_batch(batch: Any) -> bool:
    """True for tokenizer batches (sentence encoders), False for classifier batches."""
    return isinstance(batch, Mapping)


def channel_sums(delta: torch.Tensor, kind: str | None, mask: torch.Tensor | None) -> tuple[torch.Tensor, float]:
    """Sum over every position of each output channel, and the number of positions: dim 1 of a
    conv output, else the last dim; for (B, T, C) outputs with a (B, T) token mask, real tokens only."""
    if kind == "conv2d":
        return delta.sum(dim=(0, 2, 3)), float(delta.numel() // delta.shape[1])
    flat = delta.reshape(-1, delta.shape[-1])
    if mask is not None and delta.dim() == 3 and mask.shape == delta.shape[:2]:
        weights = mask.reshape(-1, 1).to(delta.dtype)  # padded tokens do not count
        return (flat * weights).sum(0), float(weights.sum())
    return flat.sum(0), float(flat.shape[0])
