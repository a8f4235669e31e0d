"""apply(): packed ResNet-20 / MiniLM predict as the fake-quant reference; bytes; errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.config import RECOMMENDED, QuantizerConfig
from mpsearch.core.errors import PlanMismatchError, UnknownNameError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.apply import apply, quantized_buffer_bytes, set_backend
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.deploy.modules import BACKENDS, QuantConv2d, QuantLinear, _PackedUnit
from mpsearch.kernels.packing import unpack
from mpsearch.kernels.quantize import quantize, weight_matrix
from mpsearch.zoo import load_cifar10, load_pretrained, to_tensor

N_IMAGES = 200
AFFINE = QuantizerConfig(scheme="affine")  # no clip search: keeps the default run short


def units_of(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def mixed_plan(model: nn.Module, config: QuantizerConfig) -> BitPlan:
    """2/3/4/8 bits in turn, first and last layers at 8."""
    names = units_of(model)
    bits = {n: (2, 3, 4, 8)[i % 4] for i, n in enumerate(names)}
    bits[names[0]] = bits[names[-1]] = 8
    return BitPlan(bits=bits, quantizer=config)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    return load_pretrained("resnet20").eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return to_tensor(load_cifar10(limit=N_IMAGES)[0])


@pytest.fixture(scope="module")
def reference_logits(resnet: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fake_quantize_model(resnet, mixed_plan(resnet, AFFINE))(images)


def check_packed_resnet20(resnet: nn.Module, images: torch.Tensor,
                          reference_logits: torch.Tensor, backend: str, n: int) -> None:
    plan = mixed_plan(resnet, AFFINE)
    model_q = apply(resnet, plan, backend)
    reference_logits = reference_logits[:n]
    with torch.no_grad():
        logits = model_q(images[:n])
    assert torch.equal(logits.argmax(1), reference_logits.argmax(1))
    err = float((logits - reference_logits).abs().max())
    assert err <= 1e-4 * float(reference_logits.abs().max())  # 20 layers of float32 reordering
    if backend == "reference":
        assert torch.equal(logits, reference_logits)
    packed = dict(model_q.named_modules())
    for name in units_of(resnet):  # codes bit-exact with the reference quantizer
        unit = packed[name]
        want = quantize(weight_matrix(resnet.get_submodule(name).weight.detach(), "conv2d"
                                      if isinstance(unit, QuantConv2d) else "linear"),
                        plan.bits[name], AFFINE)
        assert torch.equal(unpack(unit.packed, unit.bits, unit.K), want.codes)


@pytest.mark.parametrize("backend", BACKENDS.names())
def test_packed_resnet20_predicts_as_fake_quant(resnet: nn.Module, images: torch.Tensor,
                                                reference_logits: torch.Tensor,
                                                backend: str) -> None:
    check_packed_resnet20(resnet, images, reference_logits, backend, N_IMAGES)


def test_state_dict_has_no_float_weights(resnet: nn.Module) -> None:
    model_q = apply(resnet, mixed_plan(resnet, QuantizerConfig()))
    state = model_q.state_dict()
    names = units_of(resnet)
    assert not any(f"{n}.weight" in state for n in names)
    assert all(state[f"{n}.packed"].dtype == torch.uint8 for n in names)
    assert not any(f"{n}.zero" in state for n in names)  # symmetric: zero implied


def test_bytes_of_a_4_bit_plan_are_under_a_third_of_fp32(resnet: nn.Module) -> None:
    plan = BitPlan(bits={n: 4 for n in units_of(resnet)}, quantizer=RECOMMENDED)
    sizes = quantized_buffer_bytes(apply(resnet, plan))
    fp32 = sum(t.numel() * (4 if t.is_floating_point() else t.element_size())
               for t in resnet.state_dict().values())
    assert sizes["fp32"] == fp32
    assert sizes["total"] == sizes["packed"] + sizes["scale"] + sizes["zero"] + sizes["float"]
    assert sizes["total"] < fp32 / 3
    n_weights = sum(resnet.get_submodule(n).weight.numel() for n in units_of(resnet))
    assert sizes["packed"] >= n_weights // 2


def test_sixteen_bit_units_stay_float_and_input_is_untouched(resnet: nn.Module) -> None:
    names = units_of(resnet)
    plan = BitPlan(bits={n: 16 if n == "linear" else 4 for n in names})
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    model_q = apply(resnet, plan, "torch")
    assert type(model_q.linear) is nn.Linear
    assert isinstance(model_q.conv1, QuantConv2d)
    assert all(torch.equal(v, resnet.state_dict()[k]) for k, v in before.items())
    assert type(resnet.conv1) is nn.Conv2d


def test_inplace_and_set_backend() -> None:
    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 8)
    model_q = apply(net, BitPlan(bits={"0": 3, "2": 8}), inplace=True)
    assert model_q is net and isinstance(net[0], QuantLinear)
    ref = model_q(x)
    set_backend(model_q, "numba")
    assert all(m.backend == "numba" for m in model_q.modules() if isinstance(m, _PackedUnit))
    assert float((model_q(x) - ref).abs().max()) <= 1e-5 * float(ref.abs().max())


def test_activation_quantization_is_applied_as_in_fake_quant() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
    plan = BitPlan(bits={"0": 4, "2": 4}).with_activations({"2": 4}, {"2": (0.0, 1.5)})
    x = torch.randn(5, 8)
    with torch.no_grad():
        want = fake_quantize_model(net, plan)(x)
        assert torch.equal(apply(net, plan)(x), want)
        assert not torch.equal(apply(net, BitPlan(bits={"0": 4, "2": 4}))(x), want)


def test_uniform_per_group_plan_packs_and_mixed_one_packs_group_wise() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 4))
    config = QuantizerConfig(group_size=16)
    x = torch.randn(2, 32)
    uniform = BitPlan(bits={"0": (3,) * 8}, quantizer=config)
    with torch.no_grad():
        assert torch.equal(apply(net, uniform)(x), fake_quantize_model(net, uniform)(x))
    mixed = BitPlan(bits={"0": (2, 4) * 4}, quantizer=config)
    with torch.no_grad():
        assert torch.equal(apply(net, mixed, "torch")(x), fake_quantize_model(net, mixed)(x))


def test_errors(resnet: nn.Module) -> None:
    net = nn.Sequential(nn.Linear(8, 4))
    with pytest.raises(UnknownNameError, match="backend.*'numba'"):
        apply(net, BitPlan(bits={"0": 4}), backend="triton")
    with pytest.raises(PlanMismatchError, match="missing="):
        apply(resnet, BitPlan(bits={"0": 4}))  # a plan for another model


@pytest.mark.slow
def test_packed_minilm_embeds_as_fake_quant() -> None:
    from mpsearch.zoo import embed_sentences, load_minilm

    model, tokenizer = load_minilm()
    sentences = ["Low-bit weights shrink a model.", "Quantization maps floats to integers.",
                 "The cat sat on the mat.", "Mixed precision gives each layer its own width.",
                 "Dogs like to run in the park.", "Packing stores several codes in one byte."]
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    plan = BitPlan(bits={n: (4, 8, 3, 4)[i % 4] for i, n in enumerate(names)},
                   quantizer=QuantizerConfig(scheme="affine", group_size=128))
    want = embed_sentences(fake_quantize_model(model, plan), tokenizer, sentences)
    neighbours = (want @ want.T).fill_diagonal_(-2).argmax(1)
    for backend in BACKENDS.names():
        model_q = apply(model, plan, backend)
        got = embed_sentences(model_q, tokenizer, sentences)
        assert float((got - want).abs().max()) < 1e-4
        assert torch.equal((got @ got.T).fill_diagonal_(-2).argmax(1), neighbours)
    sizes = quantized_buffer_bytes(model_q)
    linear_fp32 = sum(model.get_submodule(n).weight.numel() * 4 for n in names)
    assert sizes["packed"] + sizes["scale"] + sizes["zero"] < linear_fp32 / 3
    assert sizes["total"] < sizes["fp32"]  # the word embeddings stay float
