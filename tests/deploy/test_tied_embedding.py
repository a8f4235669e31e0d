"""A tied decoder under a plan: fake-quant, packed (every backend) and exported+loaded models are one
model, the shared weight is quantized once, stored once and counted once."""

from __future__ import annotations

import copy

import pytest
import torch

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.apply import apply, quantized_buffer_bytes
from mpsearch.deploy.embedding import QuantEmbedding
from mpsearch.deploy.evaluate import fake_quantize_model, plan_size
from mpsearch.deploy.export import export, load
from mpsearch.deploy.modules import QuantLinear
from mpsearch.kernels.backends import BACKENDS
from mpsearch.kernels.quantize import fake_quantize
from mpsearch.space.discover import discover_quietly

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder

QUANTIZERS = [QuantizerConfig(), QuantizerConfig(scheme="affine", group_size=16)]
IDS = torch.randint(0, 260, (2, 11), generator=torch.Generator().manual_seed(0))


def _plan(model: torch.nn.Module, config: QuantizerConfig, **options) -> BitPlan:
    space = discover_quietly(model, pin_first_last=None, **options)
    return BitPlan(bits={n: (3 if "mlp" in n else 4) for n in space.names}, quantizer=config)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= 1e-5 * float(b.abs().max())


@pytest.mark.parametrize("config", QUANTIZERS, ids=["symmetric", "affine-g16"])
def test_fake_quant_changes_the_shared_weight_once(config: QuantizerConfig) -> None:
    model = tiny_decoder(tied=True)
    original = model.lm_head.weight.detach().clone()
    q = fake_quantize_model(model, _plan(model, config))
    assert q.lm_head.weight is q.model.embed_tokens.weight  # still one Parameter
    assert torch.equal(q.lm_head.weight, fake_quantize(original, 4, config))  # quantized once, not twice
    assert torch.equal(model.lm_head.weight, original)


@pytest.mark.parametrize("config", QUANTIZERS, ids=["symmetric", "affine-g16"])
def test_packed_and_exported_models_equal_fake_quant_in_every_backend(config: QuantizerConfig, tmp_path) -> None:
    model = tiny_decoder(tied=True)
    plan = _plan(model, config)
    reference = _logits(fake_quantize_model(model, plan))
    assert not _close(reference, _logits(model))  # the plan changes the model
    for backend in BACKENDS:
        packed = apply(model, plan, backend=backend)
        assert isinstance(packed.model.embed_tokens, QuantEmbedding) and isinstance(packed.lm_head, QuantLinear)
        assert packed.model.embed_tokens.tied is packed.lm_head
        assert _close(_logits(packed), reference), backend
    folder = export(packed, plan, tmp_path / "tied")
    for backend in BACKENDS:
        loaded = load(folder, tiny_decoder(tied=True, seed=7), backend=backend)  # other weights: all from the file
        assert loaded.model.embed_tokens.tied is loaded.lm_head
        assert _close(_logits(loaded), reference), backend
    rebuilt = load(folder, backend="torch")  # no float model: the recorded architecture, the file's tensors
    assert rebuilt.model.embed_tokens.tied is rebuilt.lm_head and _close(_logits(rebuilt), reference)


def test_the_packed_model_holds_one_copy_of_the_shared_codes(tmp_path) -> None:
    model = tiny_decoder(tied=True)
    plan = _plan(model, QuantizerConfig())
    packed = apply(model, plan, backend="torch")
    state = packed.state_dict()
    assert not [k for k in state if k.startswith("model.embed_tokens.")]
    assert packed.model.embed_tokens.packed is packed.lm_head.packed
    again = copy.deepcopy(packed)  # and stays one copy when copied
    assert again.model.embed_tokens.packed is again.lm_head.packed
    sizes = quantized_buffer_bytes(packed)
    rows_bytes = 260 * 48 * 4 // 8
    layers = sum(m.packed.numel() for n, m in packed.named_modules() if isinstance(m, QuantLinear))
    assert sizes["packed"] == layers and packed.lm_head.packed.numel() == rows_bytes
    fp32 = 4 * sum(t.numel() for t in [*model.parameters(), *model.buffers()])  # the shared table once
    assert sizes["fp32"] == fp32 and fp32 == 216816
    size = plan_size(model, plan)
    assert size.searched_weights == sum(p.numel() for p in model.parameters() if p.dim() == 2)
    assert size.code_bits == sum(4 * p.numel() if "mlp" not in n else 3 * p.numel()
                                 for n, p in model.named_parameters() if p.dim() == 2)


def test_untied_embedding_unit_fake_quant_packed_and_exported_agree(tmp_path) -> None:
    model = tiny_decoder(tied=False)
    config = QuantizerConfig(scheme="affine", group_size=16)
    plan = _plan(model, config, embeddings=True)
    assert plan.bits["model.embed_tokens"] == 4
    fq = fake_quantize_model(model, plan)
    assert torch.equal(fq.model.embed_tokens.weight, fake_quantize(model.model.embed_tokens.weight, 4, config))
    reference = _logits(fq)
    for backend in BACKENDS:
        packed = apply(model, plan, backend=backend)
        assert packed.model.embed_tokens.tied is None
        assert _close(_logits(packed), reference), backend
    assert {"model.embed_tokens.packed", "model.embed_tokens.scale", "model.embed_tokens.zero"} <= set(packed.state_dict())
    loaded = load(export(packed, plan, tmp_path / "untied"), tiny_decoder(tied=False, seed=3), backend="numba")
    assert _close(_logits(loaded), reference)
    float_table = fake_quantize_model(model, BitPlan(bits={**plan.bits, "model.embed_tokens": 16}, quantizer=config))
    assert torch.equal(float_table.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_gptq_refuses_a_quantized_embedding_unit() -> None:
    model = tiny_decoder(tied=False)
    plan = BitPlan(bits=_plan(model, QuantizerConfig(), embeddings=True).bits, quantizer=QuantizerConfig(method="gptq"))
    with pytest.raises(PlanMismatchError, match=r"GPTQ quantizes a layer from the inputs.*\['model.embed_tokens'\]"):
        fake_quantize_model(model, plan, batches=[IDS])


def test_a_gptq_plan_packs_the_tied_unit_from_gptq_codes() -> None:
    from mpsearch.deploy.apply import set_backend

    model = tiny_decoder(tied=True)
    plan = BitPlan(bits=_plan(model, QuantizerConfig()).bits, quantizer=QuantizerConfig(method="gptq"))
    fq = fake_quantize_model(model, plan, batches=[IDS])
    reference = _logits(fq)
    packed = apply(model, plan, backend="torch", batches=[IDS])
    assert _close(_logits(packed), reference)
    assert torch.equal(packed.model.embed_tokens(IDS[0]), fq.lm_head.weight[IDS[0]])  # GPTQ's codes, looked up
    set_backend(packed, "numba")  # the table follows its layer's backend change
    assert packed.model.embed_tokens.backend == "numba" and _close(_logits(packed), reference)


def test_activation_bits_on_an_embedding_unit_are_refused() -> None:
    model = tiny_decoder(tied=False)
    bits = _plan(model, QuantizerConfig(), embeddings=True).bits
    plan = BitPlan(bits=bits, activation_bits={"model.embed_tokens": 8}, activation_ranges={"model.embed_tokens": (0.0, 259.0)})
    for run in (lambda: fake_quantize_model(model, plan), lambda: apply(model, plan)):
        with pytest.raises(PlanMismatchError, match=r"for an embedding is token ids.*\['model.embed_tokens'\]"):
            run()
