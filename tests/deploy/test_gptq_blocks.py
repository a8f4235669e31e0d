"""Sequential GPTQ block by block and shared Hessians (mpsearch/deploy/gptq_blocks.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import ConfigError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.gptq import run_gptq
from mpsearch.deploy.gptq_blocks import block_chain, calibration_steps
from mpsearch.kernels.gptq import HessianAccumulator, gptq_quantize
from mpsearch.zoo.llm import tiny_decoder

GPTQ = QuantizerConfig(scheme="affine", method="gptq", group_size=16)


def decoder_plan(model: nn.Module, lm_head: int = 16) -> BitPlan:
    bits = {n: 3 for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith("model.layers.")}
    bits["model.layers.1.mlp.down_proj"] = 2
    return BitPlan(bits={**bits, "lm_head": lm_head}, quantizer=GPTQ)


def token_batches() -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(2):
        ids = torch.randint(0, 260, (3, 20), generator=gen)
        mask = torch.ones(3, 20, dtype=torch.int64)
        mask[0, 15:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@pytest.mark.parametrize("lm_head", [16, 4])
def test_block_by_block_equals_the_whole_model_run(lm_head: int) -> None:
    model = tiny_decoder(seed=1, layers=3, tied=False)
    plan = decoder_plan(model, lm_head)
    batches = token_batches()
    assert block_chain(model, list(plan.bits), batches[0]) is not None
    whole, r_whole = run_gptq(model, plan, batches, mode="whole")
    block, r_block = run_gptq(model, plan, batches, mode="block")
    assert set(r_whole) == set(r_block) == {n for n, b in plan.bits.items() if b != 16}
    for name in r_whole:
        torch.testing.assert_close(r_block[name].weight, r_whole[name].weight, rtol=0, atol=1e-5)
        assert r_block[name].error == pytest.approx(r_whole[name].error, rel=1e-4)
    auto, _ = run_gptq(model, plan, batches)
    for (n, a), (_, b) in zip(auto.named_parameters(), block.named_parameters()):
        assert torch.equal(a, b), n


def test_units_on_one_input_share_a_hessian_and_the_rest_follow_forward_order() -> None:
    model = tiny_decoder(seed=0, layers=2)
    plan = decoder_plan(model)
    from mpsearch.deploy.gptq import _forward_order

    names = [n for n, b in plan.bits.items() if b != 16]
    modules = dict(model.named_modules())
    order, calls, first = _forward_order(model, names, token_batches()[0])
    steps = calibration_steps(order, {id(modules[n].weight): [n] for n in names}, modules, calls, first)
    short = [[g[0].split(".", 3)[-1] for g in groups] for groups, _ in steps]
    assert short[:4] == [["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], ["self_attn.o_proj"],
                         ["mlp.gate_proj", "mlp.up_proj"], ["mlp.down_proj"]]
    assert len(steps) == 8 and all(stop for _, stop in steps)


class TwoHeads(nn.Module):
    """Two Linears read the same tensor, a third a copy of it: only the first two share a step."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(x) + self.c(x * 1.0)


def test_shared_input_units_are_quantized_with_that_inputs_hessian() -> None:
    torch.manual_seed(0)
    net = TwoHeads().eval()
    x = torch.randn(40, 8) @ (torch.randn(8, 8) + torch.eye(8))
    plan = BitPlan(bits={"a": 2, "b": 3, "c": 2}, quantizer=QuantizerConfig(method="gptq"))
    _, results = run_gptq(net, plan, [x])
    acc = HessianAccumulator(8)
    acc.add(x)
    for name in "abc":
        ref = gptq_quantize(getattr(net, name).weight, acc.hessian(), plan.bits[name], plan.quantizer)
        assert torch.equal(results[name].weight, ref.weight)


def test_block_mode_needs_blocks_and_modes_are_checked() -> None:
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    plan = BitPlan(bits={"0": 3, "2": 3}, quantizer=QuantizerConfig(method="gptq"))
    with pytest.raises(ConfigError, match="mode='block' needs the planned units in a chain of blocks"):
        run_gptq(net, plan, [torch.randn(8, 4)], mode="block")
    with pytest.raises(ConfigError, match="`mode` must be 'auto', 'block' or 'whole', but got mode='fast'"):
        run_gptq(net, plan, [torch.randn(8, 4)], mode="fast")
