"""A self-supervised calibration loss for sentence encoders (MiniLM), so every estimator runs on them.

A sentence encoder has no labels, and the obvious loss, the distance between the
model's embeddings and its own fp32 embeddings of the same input, is zero with a
zero gradient at the fp32 weights: every gradient estimator (Fisher, |w * g|,
GWQ) would score zero. So the input is perturbed and the target is not:

    embedding_distillation_loss = mean over sentences of ||e(x~) - e_fp32(x)||^2

where x~ is the sentence with ``mask_rate`` of its real tokens (at least one)
replaced by ``[MASK]`` (a fixed, seeded choice made once, so the loss is a fixed
function of the weights) and e is the mean-pooled, L2-normalised embedding of
:func:`mpsearch.zoo.embed_sentences`. The loss measures how far masking moves the
embedding: its gradient is non-zero at the fp32 weights, per sentence too, and
its Hessian there is close to the Gauss-Newton matrix J^T J of the embedding
map, so the Hessian estimators see a positive, meaningful curvature.

Attention runs with PyTorch's plain ("math") SDPA kernel inside the loss: the
fused CPU kernel has no double backward, which the Hessian estimators need.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mpsearch.core.errors import ConfigError, DataError
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.hooks import model_mode

_MODEL_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def sentence_embeddings(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings of a tokenized batch (differentiable)."""
    inputs = {k: batch[k] for k in _MODEL_KEYS if k in batch}
    with sdpa_kernel([SDPBackend.MATH]):
        hidden = model(**inputs).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, p=2, dim=1)


def embedding_distillation_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean squared distance between embeddings of the perturbed sentences and the fp32 targets.

    ``batch`` holds the perturbed ``input_ids``, ``attention_mask``, optional
    ``token_type_ids`` and ``target`` (fp32 embeddings of the clean sentences), as made
    by :func:`minilm_calibration`.
    """
    return (sentence_embeddings(model, batch) - batch["target"]).square().sum(dim=1).mean()


def minilm_calibration(
    model: nn.Module,
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    mask_rate: float = 0.15,
    seed: int = 0,
    batch_size: int = 8,
    max_length: int = 128,
) -> Calibration:
    """Calibration for a sentence encoder under :func:`embedding_distillation_loss`.

    Example:
        >>> from mpsearch.zoo import load_minilm
        >>> model, tokenizer = load_minilm()  # doctest: +SKIP
        >>> calib = minilm_calibration(model, tokenizer, ["4-bit weights.", "Mixed precision."])  # doctest: +SKIP
        >>> sens = get_estimator("fisher", progress=False).estimate(model, calib, discover(model))  # doctest: +SKIP
    """
    if isinstance(sentences, str) or not sentences or not all(isinstance(s, str) for s in sentences):
        raise DataError("`sentences` must be a non-empty sequence of str, but got "
                        f"{type(sentences).__name__}. Pass e.g. load_corpus(data_dir)[:16].")
    if not 0 < mask_rate < 1:
        raise ConfigError(f"`mask_rate` must be within (0, 1), but got mask_rate={mask_rate!r}. Pass e.g. 0.15.")
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise ConfigError("the tokenizer must have a [MASK] token for the perturbation, but it has none. Use a BERT-style tokenizer.")
    generator = torch.Generator().manual_seed(seed)
    batches, sizes = [], []
    with model_mode(model):
        for start in range(0, len(sentences), batch_size):
            enc = dict(tokenizer(list(sentences[start : start + batch_size]), padding=True, truncation=True,
                                 max_length=max_length, return_tensors="pt"))
            with torch.no_grad():
                target = sentence_embeddings(model, enc).detach()
            ids = enc["input_ids"].clone()
            for row in range(len(ids)):
                special = torch.tensor(tokenizer.get_special_tokens_mask(ids[row].tolist(), already_has_special_tokens=True))
                real = torch.nonzero((special == 0) & (enc["attention_mask"][row] == 1)).flatten()
                if len(real) == 0:
                    continue
                k = max(1, round(mask_rate * len(real)))
                chosen = real[torch.randperm(len(real), generator=generator)[:k]]
                ids[row, chosen] = tokenizer.mask_token_id
            batches.append({**enc, "input_ids": ids, "target": target})
            sizes.append(len(ids))
    return Calibration(batches=tuple(batches), sizes=tuple(sizes), loss_fn=embedding_distillation_loss, name="minilm-masked")


def probe_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """v . e(x) with a fixed random probe v per sentence: E[(d/dw)^2] is the Gauss-Newton diagonal."""
    return (sentence_embeddings(model, batch) * batch["probe"]).sum(dim=1).mean()


def embedding_gn_calibration(model: nn.Module, tokenizer: Any, sentences: Sequence[str], *, seed: int = 0,
                             batch_size: int = 8, max_length: int = 128) -> Calibration:
    """Calibration whose Fisher diagonal is the Gauss-Newton diagonal of the metric itself.

    For unit-norm embeddings 1 - cos(e', e) = ||e' - e||^2 / 2, whose Hessian at the fp32
    weights is J^T J (J: Jacobian of the clean sentence's embedding). With a Gaussian probe v per
    sentence, the gradient of v . e(x) is J^T v and E[(J^T v)_j^2] = [J^T J]_jj; independent
    probes keep it unbiased for micro-batches too (cross terms vanish in expectation), so the
    ``fisher`` per-weight values of this loss estimate diag(J^T J) up to one global factor.
    On MiniLM, group-wise plans from it beat uniform 3-bit; from the masked-token loss of
    :func:`minilm_calibration` they did not (``studies/transformer_minilm.py``).
    """
    generator = torch.Generator().manual_seed(seed)
    batches, sizes = [], []
    for start in range(0, len(sentences), batch_size):
        enc = dict(tokenizer(list(sentences[start : start + batch_size]), padding=True, truncation=True,
                             max_length=max_length, return_tensors="pt"))
        n = len(enc["input_ids"])
        batches.append({**enc, "probe": torch.randn(n, model.config.hidden_size, generator=generator)})
        sizes.append(n)
    return Calibration(batches=tuple(batches), sizes=tuple(sizes), loss_fn=probe_loss, name="minilm-gn-probe")
