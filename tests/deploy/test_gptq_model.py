"""Sequential GPTQ of whole models (mpsearch/deploy/gptq.py) and its place in fake_quantize_model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import ConfigError, DataError, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.deploy.gptq import gptq_quantize_model, gptq_quantized_weights, run_gptq
from mpsearch.kernels.activations import quantize_tensor
from mpsearch.kernels.gptq import HessianAccumulator, gptq_quantize
from mpsearch.kernels.quantize import dequantize, weight_matrix

GPTQ = QuantizerConfig(scheme="affine", method="gptq")


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 6)).eval()


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 4)).eval()


def inputs(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_each_unit_is_calibrated_on_its_quantized_predecessors() -> None:
    net, x = mlp(), inputs(0, 64, 12)
    plan = BitPlan(bits={"0": 2, "2": 3}, quantizer=GPTQ)
    q, results = run_gptq(net, plan, [x[:40], x[40:]])
    seen = HessianAccumulator(10)
    seen.add(torch.relu(q[0](x)))
    expected = gptq_quantize(net[2].weight, seen.hessian(), 3, GPTQ)
    assert torch.equal(q[2].weight, expected.weight) and results["2"].error == expected.error
    float_inputs = HessianAccumulator(10)
    float_inputs.add(torch.relu(net[0](x)))
    assert not torch.equal(float_inputs.hessian(), seen.hessian())


def test_units_are_calibrated_on_their_quantized_activations() -> None:
    net, x = mlp(), inputs(10, 64, 12)
    plan = BitPlan(bits={"0": 3, "2": 3}, quantizer=GPTQ).with_activations({"2": 2}, {"2": (0.0, 1.0)})
    q, results = run_gptq(net, plan, [x])
    seen = HessianAccumulator(10)
    seen.add(quantize_tensor(torch.relu(q[0](x)), 2, 0.0, 1.0))
    assert results["2"].error == gptq_quantize(net[2].weight, seen.hessian(), 3, GPTQ).error
    assert not q[2]._forward_pre_hooks  # the calibration hooks are gone


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=2),
    nn.Conv2d(4, 6, (3, 2), padding=(2, 1), groups=2),
    nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect", groups=4),
    nn.Conv2d(4, 6, 3, padding="same", bias=False),
])
def test_conv_hessian_gives_the_output_error(conv: nn.Conv2d) -> None:
    """tr(dW H dW^T) over the patches must equal the squared output change of the convolution:
    it checks the unfold order against weight_matrix, padding, stride, dilation and groups."""
    torch.manual_seed(1)
    net = nn.Sequential(conv).eval()
    x = inputs(1, 5, 4, 9, 8)
    q, results = run_gptq(net, BitPlan(bits={"0": 2}, quantizer=GPTQ), [x])
    delta = net[0]._conv_forward(x, (q[0].weight - net[0].weight).detach(), None)
    n = delta.shape[0] * delta.shape[2] * delta.shape[3]
    assert results["0"].error == pytest.approx(2 * float(delta.double().square().sum()) / n, rel=1e-4)


def test_transformers_conv1d() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(Conv1D(6, 10)).eval()  # weight stored (in, out)
    x = inputs(2, 3, 7, 10)
    before = net[0].weight.detach().clone()
    q, results = run_gptq(net, BitPlan(bits={"0": 3}, quantizer=GPTQ), [x])
    assert torch.equal(net[0].weight, before)  # the (in, out) weight is quantized through a transposed view
    delta = x @ (q[0].weight - net[0].weight).detach()
    assert results["0"].error == pytest.approx(2 * float(delta.double().square().sum()) / 21, rel=1e-4)
    assert torch.equal(dequantize(results["0"].qweight), weight_matrix(q[0].weight, "conv1d"))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.proj = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.embed(input_ids))


def test_padded_tokens_are_left_out() -> None:
    torch.manual_seed(3)
    net = TinyEncoder().eval()
    ids = torch.randint(0, 20, (4, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(4, 6, dtype=torch.int64)
    mask[:, 4:] = 0
    other = ids.clone()
    other[:, 4:] = (other[:, 4:] + 7) % 20
    plan = BitPlan(bits={"proj": 2}, quantizer=GPTQ)
    a = gptq_quantize_model(net, plan, [{"input_ids": ids, "attention_mask": mask}])
    b = gptq_quantize_model(net, plan, [{"input_ids": other, "attention_mask": mask}])
    c = gptq_quantize_model(net, plan, [{"input_ids": other, "attention_mask": torch.ones_like(mask)}])
    assert torch.equal(a.proj.weight, b.proj.weight) and not torch.equal(a.proj.weight, c.proj.weight)


class Reused(nn.Module):
    """One Linear called twice per forward: its Hessian holds both calls' inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.fc(x)))


def test_a_unit_called_twice_sees_both_inputs() -> None:
    torch.manual_seed(4)
    net, x = Reused().eval(), inputs(4, 30, 6)
    q = gptq_quantize_model(net, BitPlan(bits={"fc": 3}, quantizer=GPTQ), [x])
    acc = HessianAccumulator(6)
    acc.add(x)
    acc.add(torch.relu(net.fc(x)))
    assert torch.equal(q.fc.weight, gptq_quantize(net.fc.weight, acc.hessian(), 3, GPTQ).weight)


def mixed_plan() -> BitPlan:
    widths = tuple(torch.tensor([2, 3, 4])[torch.arange(8 * 5) % 3].tolist())  # 8 rows x 5 groups (36 inputs)
    cfg = dataclasses.replace(GPTQ, group_size=8, act_order=True)
    return BitPlan(bits={"0": 3, "2": widths, "5": 16}, quantizer=cfg)


def test_deterministic_for_a_seed_and_float_units_untouched() -> None:
    net = cnn()
    runs = [gptq_quantize_model(net, mixed_plan(), [inputs(seed, 16, 3, 5, 5)]) for seed in (5, 5, 6)]
    for a, b in zip(runs[0].parameters(), runs[1].parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(runs[0][2].weight, runs[2][2].weight)
    assert torch.equal(runs[0][5].weight, net[5].weight) and not torch.equal(runs[0][0].weight, net[0].weight)


def test_quantized_weights_are_the_models_codes() -> None:
    net, x = cnn(), inputs(7, 16, 3, 5, 5)
    plan = mixed_plan()
    before = [p.clone() for p in net.parameters()]
    weights = gptq_quantized_weights(net, plan, [x])
    q = gptq_quantize_model(net, plan, [x])
    assert sorted(weights) == ["0", "2"]
    for name in weights:
        assert torch.equal(dequantize(weights[name]), weight_matrix(dict(q.named_modules())[name].weight, "conv2d"))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_fake_quantize_model_runs_gptq_with_calibration_data() -> None:
    net, x = mlp(), inputs(8, 32, 12)
    plan = BitPlan(bits={"0": 3, "2": 4}, quantizer=GPTQ).with_bias_correction({"2": [0.5] * 6})
    with pytest.raises(ConfigError, match="method='gptq'.*batches=None.*batches="):
        fake_quantize_model(net, plan)
    calib = type("Calib", (), {"batches": ((x, torch.zeros(32)),)})()
    q = fake_quantize_model(net, plan, batches=calib)
    bare = gptq_quantize_model(net, plan, [x])
    assert torch.equal(q[0].weight, bare[0].weight)
    assert torch.allclose(q[2].bias, bare[2].bias + 0.5)


def test_bad_input() -> None:
    net, x = mlp(), inputs(9, 8, 12)
    with pytest.raises(ConfigError, match="method='gptq', but got method='rtn'"):
        run_gptq(net, BitPlan(bits={"0": 3, "2": 3}), [x])
    with pytest.raises(DataError, match="at least one calibration batch"):
        run_gptq(net, BitPlan(bits={"0": 3, "2": 3}, quantizer=GPTQ), [])
    with pytest.raises(PlanMismatchError, match="missing"):
        run_gptq(net, BitPlan(bits={"0": 3}, quantizer=GPTQ), [x])

    class Skips(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.unused = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x)

    with pytest.raises(DataError, match="'unused' received none"):
        run_gptq(Skips(), BitPlan(bits={"used": 3, "unused": 3}, quantizer=GPTQ), [torch.randn(4, 4)])


@pytest.mark.slow
def test_resnet20_w3_gptq_beats_round_to_nearest() -> None:
    """Embedded ResNet-20 and test images: calibrate on 0-255, measure top-1 on 256-999, W3 with the
    first conv and the classifier at 8 bits (per-channel affine, MSE clipping)."""
    from mpsearch.core.config import RECOMMENDED
    from mpsearch.kernels.fake import quantizable_kind
    from mpsearch.zoo import accuracy, load_cifar10, load_pretrained, to_tensor

    images, labels = load_cifar10()
    x, y = to_tensor(images), torch.as_tensor(labels)
    model = load_pretrained("resnet20").eval()
    bits = {n: 8 if n in ("conv1", "linear") else 3 for n, m in model.named_modules() if quantizable_kind(m)}
    calib = [(x[i:i + 128], y[i:i + 128]) for i in (0, 128)]
    top1 = {}
    for method in ("rtn", "gptq"):
        plan = BitPlan(bits=bits, quantizer=dataclasses.replace(RECOMMENDED, method=method))
        top1[method] = accuracy(fake_quantize_model(model, plan, batches=calib), x[256:], y[256:])
    assert top1["gptq"] > top1["rtn"] + 3, top1


def test_bias_correction_of_a_gptq_plan_is_measured_on_the_gptq_model() -> None:
    """measure_bias_correction quantizes a GPTQ plan with the batches it measures on."""
    from mpsearch.deploy.bias_correction import measure_bias_correction

    torch.manual_seed(0)
    net, x = mlp(), inputs(1, 64, 12)
    plan = BitPlan(bits={"0": 3, "2": 3}, quantizer=GPTQ)
    corrections = measure_bias_correction(net, plan, [x])
    quantized = fake_quantize_model(net, plan, batches=[x])
    shift = (quantized[0](x) - net[0](x)).double().mean(0)
    assert torch.allclose(torch.tensor(corrections["0"], dtype=torch.float64), -shift, atol=1e-5)


@pytest.mark.parametrize("backend", ["reference", "torch", "numba"])
def test_apply_packs_the_gptq_codes(backend: str) -> None:
    """The packed model of a GPTQ plan computes what its fake-quant model computes."""
    from mpsearch.deploy.apply import apply

    net, x = mlp(), inputs(2, 32, 12)
    plan = BitPlan(bits={"0": 3, "2": 4}, quantizer=GPTQ)
    packed = apply(net, plan, backend, batches=[x])
    with torch.no_grad():
        torch.testing.assert_close(packed(x), fake_quantize_model(net, plan, batches=[x])(x), rtol=1e-5, atol=1e-5)
        rtn = apply(net, dataclasses.replace(plan, quantizer=dataclasses.replace(GPTQ, method="rtn")), backend)
        assert not torch.allclose(packed(x), rtn(x))  # the GPTQ codes, not round-to-nearest's
    with pytest.raises(ConfigError, match="batches"):
        apply(net, plan, backend)
