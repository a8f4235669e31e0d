"""Causal-LM calibration: token windows, the next-token loss, every gradient estimator under SDPA attention,
and the memory warning of Hessian estimates."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

pytest.importorskip("transformers")

from mpsearch.core.errors import DataError, MPSearchWarning, UnsupportedModelError
from mpsearch.sensitivity import _attention
from mpsearch.sensitivity.base import get_estimator
from mpsearch.sensitivity.calibration import Calibration, next_token_loss
from mpsearch.space.discover import discover_quietly
from mpsearch.zoo.llm import tiny_decoder

pytestmark = pytest.mark.torch_threads(1)


def _windows(n: int = 3, t: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 260, (n, t), generator=torch.Generator().manual_seed(seed))


def test_windows_become_batches_of_windows():
    calib = Calibration.causal_lm(_windows(5), batch_size=2)
    assert calib.sizes == (2, 2, 1) and calib.loss_fn is next_token_loss
    assert torch.equal(torch.cat(calib.batches), _windows(5))
    assert Calibration.from_inputs(_windows(5), batch_size=4).loss_fn is next_token_loss


@pytest.mark.parametrize(("windows", "match"), [
    (torch.rand(3, 8), "int64 tensor"),
    (torch.arange(8), "int64 tensor"),
    (torch.zeros(3, 1, dtype=torch.long), "at least 2 tokens"),
    (torch.full((2, 4), -1), "must be >= 0"),
])
def test_bad_windows_are_refused(windows, match):
    with pytest.raises(DataError, match=match):
        Calibration.causal_lm(windows)


def test_token_ids_as_classification_inputs_point_to_causal_lm():
    with pytest.raises(DataError, match=r"token ids.*Calibration\.causal_lm"):
        Calibration.classification(_windows(), torch.zeros(3, dtype=torch.long))


def test_next_token_loss_by_hand_and_weighted_over_batches():
    model, ids = tiny_decoder(seed=1), _windows(3)
    with torch.no_grad():
        logits = model(ids).logits.double()
        log_p = logits - logits.exp().sum(-1, keepdim=True).log()  # log-softmax by hand
        hand = -torch.stack([log_p[b, t, ids[b, t + 1]] for b in range(3) for t in range(11)]).mean()
        assert float(next_token_loss(model, ids)) == pytest.approx(float(hand), rel=1e-5)
        calib = Calibration.causal_lm(ids, batch_size=2)  # batches of 2 and 1 windows
        assert float(calib.mean_loss(model)) == pytest.approx(float(hand), rel=1e-5)


def test_ids_beyond_the_vocabulary_are_a_data_error():
    calib = Calibration.causal_lm(torch.full((2, 6), 300))
    with pytest.raises(DataError, match="below the model's vocabulary of 260"):
        get_estimator("fisher", progress=False).estimate(tiny_decoder(), calib, discover_quietly(tiny_decoder()))


def test_hessian_under_sdpa_equals_eager_and_restores_sdpa():
    sdpa, eager = tiny_decoder(seed=2), tiny_decoder(seed=2, attn_implementation="eager")
    calib = Calibration.causal_lm(_windows(2), batch_size=1)
    loss = next_token_loss(sdpa, calib.batches[0])
    weights = [sdpa.lm_head.weight]
    grad = torch.autograd.grad(loss, weights, create_graph=True)[0]
    with pytest.raises(RuntimeError, match="derivative for"):  # what the estimators ran into without the switch
        torch.autograd.grad(grad.sum(), weights)
    space = discover_quietly(sdpa)
    runs = [get_estimator("hessian", max_probes=4, min_probes=2, progress=False).estimate(m, calib, space) for m in (sdpa, eager)]
    assert runs[0].scores == pytest.approx(runs[1].scores, rel=1e-4, abs=1e-9)
    assert any(v > 0 for v in runs[0].scores.values())
    assert sdpa.config._attn_implementation == "sdpa"


class _FlashOnly(nn.Module):
    """Attention through the fused CPU kernel called directly: no backend switch reaches it."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.proj(x).reshape(b, t, 2, 4).transpose(1, 2)
        out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, q, q, 0.0, True)[0]
        return out.transpose(1, 2).reshape(b, t, 8)


def _square_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    return model(batch).square().mean()


def test_an_operation_without_double_backward_is_a_clear_error():
    model = _FlashOnly()
    calib = Calibration.from_inputs(torch.randn(4, 5, 8), loss_fn=_square_loss, batch_size=2)
    space = discover_quietly(model, pin_first_last=None)
    with pytest.raises(UnsupportedModelError, match=r"no double backward.*first-order estimator"):
        get_estimator("hessian", max_probes=2, min_probes=2, progress=False).estimate(model, calib, space)
    assert get_estimator("fisher", progress=False).estimate(model, calib, space).scores["proj"] > 0


def test_attention_is_restored_when_the_block_raises():
    model = tiny_decoder()
    with pytest.raises(KeyError), _attention.differentiable_attention(model):
        assert model.config._attn_implementation == "eager"
        raise KeyError("inside")
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize(("name", "options"), [("fisher", {}), ("first_order", {}), ("gwq", {}), ("zeroq", {}),
                                               ("hessian_diag", {"probes": 2})])
def test_estimators_run_on_a_causal_lm(name, options):
    model = tiny_decoder(seed=4)
    space = discover_quietly(model, bits=(4, 8), include=["model.layers.0.*", "lm_head"])
    calib = Calibration.causal_lm(_windows(3, 10), batch_size=2)
    sens = get_estimator(name, progress=False, **options).estimate(model, calib, space)
    assert set(sens.scores) == set(space.names)
    assert all(v >= 0 for v in sens.scores.values()) and any(v > 0 for v in sens.scores.values())
    if name == "zeroq":
        assert sens.details["metric"] == "kl"
    assert model.config._attn_implementation == "sdpa"


def test_memory_prediction_fits_the_measured_smollm2_peaks():
    smollm2 = SimpleNamespace(num_hidden_layers=30, hidden_size=576, vocab_size=49152)
    measured = {(64, 64): 3361, (256, 256): 5288}  # MiB above the loaded model: one batch of 64 / 256 tokens
    for (batch, total), mib in measured.items():
        predicted = _attention.graph_bytes(smollm2, weights=134_479_872, batch_tokens=batch, total_tokens=total) / 2**20
        assert predicted == pytest.approx(mib, rel=0.04)


def test_memory_warning_names_the_batch_size_that_fits(monkeypatch):
    model = tiny_decoder()
    calib = Calibration.causal_lm(_windows(8, 16), batch_size=4)
    space = discover_quietly(model, bits=(4, 8), include=["lm_head"])
    weights = space.units[0].n_weights
    need = _attention.graph_bytes(model.config, weights=weights, batch_tokens=64, total_tokens=128)
    fits_two = _attention.graph_bytes(model.config, weights=weights, batch_tokens=40, total_tokens=128)  # 2.5 windows
    with pytest.warns(MPSearchWarning, match=r"largest batch, 64 tokens in windows of 16.*batch_size=2\)"):
        assert _attention.warn_graph_memory(model, calib, weights, limit=fits_two) == need
    images = Calibration.classification(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    assert _attention.warn_graph_memory(model, images, weights, limit=1.0) == 0.0
    monkeypatch.setattr(_attention, "physical_memory", lambda: need)  # half of it is the limit
    with pytest.warns(MPSearchWarning, match="Hessian estimate on this causal LM"):
        get_estimator("hessian", max_probes=2, min_probes=2, progress=False).estimate(model, calib, space)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MPSearchWarning)  # first-order: no double backward, no warning
        get_estimator("fisher", progress=False).estimate(model, calib, space)
