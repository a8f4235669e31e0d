"""Language-model quality of a (fake-)quantized causal LM: perplexity and next-token KL divergence.

Both take int64 (N, T) token windows, such as :func:`mpsearch.zoo.text.text_windows` cuts from
held-out text, and run them ``batch_size`` windows at a time without gradients.

* :func:`perplexity` is the figure GPTQ-family papers report on WikiText-2: the text is
  tokenized once and cut into non-overlapping windows of T tokens; each window is run on its
  own (no context carried over), and the logits at position t score token t + 1. Over all
  N * (T - 1) predicted tokens of all windows (every token but a window's first),

      PPL = exp( -1 / (N (T - 1)) * sum_windows sum_{t=1}^{T-1} log p(x_t | x_0 .. x_{t-1}) ).

  That is one exponential of the mean negative log-likelihood over tokens, not a mean of
  per-window perplexities. (GPTQ's reference code averages each window's mean NLL over windows;
  with windows of equal length that is the same number.)
* :func:`logit_kl` is what llama.cpp's ``--kl-divergence`` reports: the mean over all positions
  of all windows of KL(P_ref || P_quant), with P the softmax of each model's logits at that
  position (the next-token distribution), in nats. It is 0 for identical models and measures how
  far quantization moves the whole distribution, not only the probability of the true token.

Log-probabilities are taken in float32 and summed in float64, so thousands of windows add up
without loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mpsearch.core.errors import DataError
from mpsearch.space.hooks import model_mode
from mpsearch.space.tokens import causal_lm_logits, check_token_windows

__all__ = ["LMScore", "logit_kl", "perplexity"]


@dataclass(frozen=True)
class LMScore:
    """A perplexity with what it was measured on: windows, predicted tokens and the mean NLL (nats)."""

    perplexity: float
    nll: float
    windows: int
    tokens: int


def _log_probs(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """float32 log-softmax of the next-token logits of a batch of windows: (B, T, vocab)."""
    return torch.log_softmax(causal_lm_logits(model, ids).float(), dim=-1)


def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> LMScore:
    """Non-overlapping-window perplexity: exp of the mean next-token NLL over all predicted tokens (module docstring).

    Example:
        >>> windows = text_windows(tokenizer, load_prose(data_dir, "evaluation"), seq_len=256)  # doctest: +SKIP
        >>> perplexity(model, windows).perplexity  # doctest: +SKIP
    """
    check_token_windows(windows, batch_size)
    total, count = 0.0, 0
    with model_mode(model), torch.no_grad():
        for start in range(0, len(windows), batch_size):
            ids = windows[start : start + batch_size]
            log_p = _log_probs(model, ids)[:, :-1]
            picked = log_p.gather(-1, ids[:, 1:].unsqueeze(-1))
            total -= float(picked.sum(dtype=torch.float64))
            count += picked.numel()
    nll = total / count
    return LMScore(perplexity=math.exp(nll), nll=nll, windows=len(windows), tokens=count)


def logit_kl(reference: nn.Module, model: nn.Module, windows: torch.Tensor, *, batch_size: int = 4) -> float:
    """Mean KL(P_ref || P_model) in nats over every position of every window (module docstring).

    Every position counts, the last one of a window included: it has a next-token distribution
    too, though no token to score.
    """
    check_token_windows(windows, batch_size)
    total, count = 0.0, 0
    with model_mode(reference), model_mode(model), torch.no_grad():
        for start in range(0, len(windows), batch_size):
            ids = windows[start : start + batch_size]
            log_p, log_q = _log_probs(reference, ids), _log_probs(model, ids)
            if log_p.shape != log_q.shape:
                raise DataError(f"both models must share one vocabulary, but give logits {tuple(log_p.shape)} and "
                                f"{tuple(log_q.shape)}. Compare a model with its own quantized copy.")
            kl = (log_p.exp() * (log_p - log_q)).sum(dim=-1)
            total += float(kl.sum(dtype=torch.float64))
            count += kl.numel()
    return total / count
