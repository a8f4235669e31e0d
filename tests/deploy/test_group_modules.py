"""Group-wise plans deployed: per-group packed layers equal the fake-quant model, bytes exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from mpsearch.core.config import QuantizerConfig
from mpsearch.core.errors import PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.apply import apply, quantized_buffer_bytes, set_backend
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.deploy.group_modules import GroupQuantConv2d, GroupQuantLinear, is_group_unit
from mpsearch.hardware_models.memory import plan_bytes
from mpsearch.pricing.profile import memory_inventory
from mpsearch.space.discover import discover_quietly

pytest.importorskip("transformers")
from mpsearch.zoo.llm import tiny_decoder

BACKENDS = ["reference", "torch", "numba"]


def group_plan(model: nn.Module, config: QuantizerConfig, choices=(2, 3, 4), seed=0,
               skip=()) -> BitPlan:
    rng = np.random.default_rng(seed)
    bits = {}
    for u in discover_quietly(model).units:
        n = -(-u.fan_in // config.group_size)
        bits[u.name] = 4 if u.name in skip else tuple(
            int(b) for b in rng.choice(choices, u.out_features * n))
    return BitPlan(bits=bits, quantizer=config)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("scheme", ["symmetric", "affine"])
@pytest.mark.parametrize("G", [16, 32])
def test_tiny_decoder_equals_fake_quant_on_every_backend(G, scheme):
    model = tiny_decoder(seed=1, tied=False)
    plan = group_plan(model, QuantizerConfig(scheme=scheme, group_size=G))
    fq = fake_quantize_model(model, plan)
    ids = torch.randint(0, 260, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = {s: fq(ids[: s[0], : s[1]]).logits for s in ((2, 9), (1, 1), (1, 3))}
        for backend in BACKENDS:
            q = apply(model, plan, backend)
            assert sum(is_group_unit(m) for m in q.modules()) == len(plan.bits)
            for (b, t), ref in want.items():
                assert _rel(q(ids[:b, :t]).logits, ref) <= 1e-5, (backend, b, t)


def test_bytes_equal_the_memory_model_and_the_buffers():
    model = tiny_decoder(seed=2, tied=False)
    for scheme in ("symmetric", "affine"):
        config = QuantizerConfig(scheme=scheme, group_size=32)
        plan = group_plan(model, config, choices=(2, 3, 4, 8), seed=3, skip=("lm_head",))
        q = apply(model, plan, "numba")
        sizes = quantized_buffer_bytes(q)
        model_bytes = plan_bytes(memory_inventory(model), plan.bits, config)
        assert (sizes["packed"], sizes["scale"], sizes["zero"], sizes["map"]) == (
            model_bytes.packed, model_bytes.scale, model_bytes.zero, model_bytes.group_map)
        assert sizes["total"] == model_bytes.total
        tensors = {id(t): t for t in [*q.parameters(), *q.buffers()]}
        assert sizes["total"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_gptq_group_codes_pack():
    model = tiny_decoder(seed=3, tied=False)
    config = QuantizerConfig(scheme="affine", group_size=16, method="gptq")
    plan = group_plan(model, config, seed=4)
    batches = [torch.randint(0, 260, (2, 12), generator=torch.Generator().manual_seed(i))
               for i in range(2)]
    ids = torch.randint(0, 260, (1, 7))
    with torch.no_grad():
        want = fake_quantize_model(model, plan, batches=batches)(ids).logits
        for backend in ("reference", "numba"):
            got = apply(model, plan, backend, batches=batches)(ids).logits
            assert _rel(got, want) <= 1e-5


def test_conv_and_backend_switch():
    net = nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 25, 5))
    config = QuantizerConfig(scheme="affine", group_size=12)
    plan = BitPlan(bits={"0": tuple([2, 3, 8] * 6), "3": tuple([4, 2] * 65)[:5 * 13]},
                   quantizer=config)
    x = torch.randn(3, 4, 5, 5)
    with torch.no_grad():
        want = fake_quantize_model(net, plan)(x)
        q = apply(net, plan, "reference")
        assert isinstance(q[0], GroupQuantConv2d) and isinstance(q[3], GroupQuantLinear)
        for backend in BACKENDS:
            set_backend(q, backend)
            assert _rel(q(x), want) <= 1e-5 and _rel(q(x[:1]), want[:1]) <= 1e-5


def test_a_float_group_is_refused_with_the_fix():
    net = nn.Sequential(nn.Linear(8, 2))
    plan = BitPlan(bits={"0": (2, 16, 4, 4)}, quantizer=QuantizerConfig(group_size=4))
    with pytest.raises(PlanMismatchError, match="need a width of 1..8 in every group.*Plan those"):
        apply(net, plan)
