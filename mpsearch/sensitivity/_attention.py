"""Attention an estimator can differentiate twice, and a memory warning before a causal-LM estimate.

PyTorch's fused CPU attention kernel (``scaled_dot_product_attention`` on the flash backend,
which transformers picks under ``attn_implementation="sdpa"``, its default) has a backward but
no backward of the backward. Estimators that take Hessian-vector products
(``double_backward = True``: Hutchinson trace and diagonal, power iteration) failed on every
transformers LM with "derivative for aten::_scaled_dot_product_flash_attention_for_cpu_backward
is not implemented". :func:`differentiable_attention` switches such a model to transformers'
"eager" attention (plain matrix products and a softmax) for the estimate and restores the
user's choice after; any other direct ``scaled_dot_product_attention`` call runs on PyTorch's
math kernel. Where an operation still has no double backward, the error says what to do.

Their memory peaks in the double backward of one batch, about 10 MB per token on SmolLM2-135M,
on top of several copies of the searched weights (measured: 5.2 GiB for one batch of 256 tokens);
the graphs kept for the other batches add little. :func:`warn_graph_memory` predicts the peak
from the model's config and warns before the estimate starts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mpsearch.core.errors import MPSearchWarning, UnsupportedModelError
from mpsearch.space.forward import is_token_batch

__all__ = ["differentiable_attention", "estimate_guard", "graph_bytes", "warn_graph_memory"]

# Peak memory of a Hutchinson estimate, in floats (times the weights' element size):
#     WEIGHT_COPIES * searched weights                       (gradients with their graph, probes, products)
#   + (PER_TOKEN_LAYER * layers * hidden + PER_TOKEN_VOCAB * vocab) * tokens of the largest batch
#   + KEPT_PER_TOKEN_LAYER * layers * hidden * all calibration tokens   (the graphs kept between probes)
# Least-squares fit to the peak resident memory of 8 runs on SmolLM2-135M (float32, eager attention; 10 and
# 30 layers; batches of 64-256 tokens, 1-4 batches), within 4 % of each: the transient of one batch's
# double backward dominates, and the graphs kept per extra window are small.
WEIGHT_COPIES = 5.5
PER_TOKEN_LAYER = 120.0
PER_TOKEN_VOCAB = 7.0
KEPT_PER_TOKEN_LAYER = 2.0


def _attn_implementation(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None)


@contextmanager
def differentiable_attention(model: nn.Module) -> Iterator[None]:
    """For the block: attention with a double backward. transformers models not on "eager" are switched
    to it (``set_attn_implementation``) and switched back after; direct SDPA calls use the math kernel."""
    before = _attn_implementation(model)
    switch = before is not None and before != "eager" and hasattr(model, "set_attn_implementation")
    if switch:
        try:
            model.set_attn_implementation("eager")
        except (ValueError, RuntimeError, ImportError) as err:
            raise UnsupportedModelError(
                f"Hessian estimators need attention with a double backward, but {type(model).__name__}'s {before!r} attention "
                f"has none and switching it to 'eager' failed ({err}). Load the model with attn_implementation='eager', "
                "or use a first-order estimator ('fisher', 'first_order')."
            ) from None
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    except RuntimeError as err:
        if "derivative for" not in str(err) or "not implemented" not in str(err):
            raise
        reason = str(err).strip().splitlines()[0]
        raise UnsupportedModelError(
            f"this estimator differentiates twice, but an operation of {type(model).__name__} has no double backward "
            f"({reason}). Use a first-order estimator ('fisher', 'first_order', 'gwq'), or replace that operation "
            "(for transformers models: attn_implementation='eager')."
        ) from None
    finally:
        if switch:
            model.set_attn_implementation(before)


def graph_bytes(config: Any, *, weights: int, batch_tokens: int, total_tokens: int, element_size: int = 4) -> float:
    """Predicted peak bytes of a double-backward estimate on a decoder (constants above), from its config.

    ``weights``: the searched weights; ``batch_tokens``: the tokens of the largest calibration batch;
    ``total_tokens``: of all batches.
    """
    layer_width = int(getattr(config, "num_hidden_layers", 0)) * int(getattr(config, "hidden_size", 0))
    vocab = int(getattr(config, "vocab_size", 0))
    floats = (WEIGHT_COPIES * weights + (PER_TOKEN_LAYER * layer_width + PER_TOKEN_VOCAB * vocab) * batch_tokens
              + KEPT_PER_TOKEN_LAYER * layer_width * total_tokens)
    return float(element_size) * floats


def physical_memory() -> float | None:
    """Bytes of RAM of this machine, or None where the OS does not say."""
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def warn_graph_memory(model: nn.Module, data: Any, weights: int, *, limit: float | None = None) -> float:
    """Warn (:class:`MPSearchWarning`) when a double-backward estimate on a causal LM is predicted to need more
    than ``limit`` bytes (default: half this machine's RAM); return the prediction (0 if not a causal LM)."""
    config = getattr(model, "config", None)
    if config is None or not all(is_token_batch(b) for b in data.batches):
        return 0.0
    seq_len = int(data.batches[0].shape[1])
    batch_tokens, total = max(int(b.numel()) for b in data.batches), data.n_samples * seq_len
    element_size = next((p.element_size() for p in model.parameters()), 4)
    predicted = graph_bytes(config, weights=weights, batch_tokens=batch_tokens, total_tokens=total, element_size=element_size)
    what = "the limit" if limit is not None else "half of this machine's memory"
    limit = limit if limit is not None else (physical_memory() or float("inf")) / 2
    if predicted > limit:
        room = limit - graph_bytes(config, weights=weights, batch_tokens=0, total_tokens=total, element_size=element_size)
        per_window = graph_bytes(config, weights=0, batch_tokens=seq_len, total_tokens=0, element_size=element_size)
        fits = int(room // per_window) if room > 0 else 0
        fix = f"Pass Calibration.causal_lm(windows, batch_size={fits})" if fits >= 1 else "Pass shorter windows"
        warnings.warn(
            f"a Hessian estimate on this causal LM is predicted to need about {predicted / 2**30:.1f} GiB (the double "
            f"backward of its largest batch, {batch_tokens:,} tokens in windows of {seq_len}, plus copies of the "
            f"searched weights), more than {limit / 2**30:.1f} GiB, {what}. {fix}, or use a first-order estimator "
            "('fisher' differentiates one window at a time, once).",
            MPSearchWarning, stacklevel=5,
        )
    return predicted


@contextmanager
def estimate_guard(estimator: Any, model: nn.Module, data: Any, space: Any) -> Iterator[None]:
    """What an estimate on this model needs around it: for ``double_backward`` estimators, the memory
    warning and differentiable attention; nothing for the others."""
    if not getattr(estimator, "double_backward", False):
        yield
        return
    warn_graph_memory(model, data, sum(u.n_weights for u in space.units))
    with differentiable_attention(model):
        yield
