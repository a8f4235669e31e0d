"""Units under several names, and layers whose parent reads their weight (mpsearch/space/units.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mpsearch.core.errors import FloatModulesWarning, PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.apply import apply
from mpsearch.deploy.evaluate import fake_quantize_model
from mpsearch.space.discover import discover, discover_quietly
from mpsearch.space.units import check_plan_for_model, module_names, scan_model

BACKENDS = ("reference", "numba", "torch")


class Aliased(nn.Module):
    """One Linear reachable as `shared` and `alias`, called through both."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(12, 16)
        self.shared = nn.Linear(16, 16)
        self.alias = self.shared
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.shared(torch.relu(self.first(x))))
        return self.head(torch.relu(self.alias(h)))


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(8, 16)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.att(h, h, h)[0].mean(1))


def test_module_names_lists_every_name_first_name_first() -> None:
    model = Aliased()
    assert module_names(model)[id(model.shared)] == ["shared", "alias"]


def test_an_aliased_module_is_one_unit_with_its_aliases() -> None:
    space = discover(Aliased(), pin_first_last=None)
    assert space.names == ("first", "shared", "head")
    assert space.unit("shared").aliases == ("alias",)
    assert space.unit("first").aliases == ()


def test_patterns_match_aliases_too() -> None:
    space = discover(Aliased(), pin_first_last=None, exclude=["alias"])
    assert space.names == ("first", "head") and space.float_units == ("shared",)
    assert discover(Aliased(), pin_first_last=None, pins={"alias": 4}).unit("shared").bits == (4,)


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_replaces_an_aliased_unit_under_every_name(backend: str) -> None:
    model = Aliased().eval()
    plan = BitPlan(bits={"first": 8, "shared": 2, "head": 8})
    x = torch.randn(5, 12)
    packed = apply(model, plan, backend=backend)
    assert packed.alias is packed.shared and type(packed.shared).__name__ == "QuantLinear"
    with torch.no_grad():
        reference = fake_quantize_model(model, plan)(x)
        got = packed(x)
        assert not torch.allclose(reference, model(x), atol=1e-3)  # 2 bits changes the output
    # before the fix the alias stayed float and the outputs differed by about 1e-2
    assert torch.allclose(got, reference, atol=1e-5)


def test_a_plan_naming_an_alias_is_refused() -> None:
    with pytest.raises(PlanMismatchError, match=r"each unit once, by its first name, but it names aliases \('alias' is 'shared'\)"):
        check_plan_for_model(BitPlan(bits={"first": 8, "alias": 4, "head": 8}), Aliased())


def test_multihead_attention_out_proj_stays_float_with_the_reason() -> None:
    units, floats = scan_model(Attention())
    assert [u.name for u in units] == ["embed", "head"]
    reasons = {f.name: f.reason for f in floats}
    assert set(reasons) == {"att", "att.out_proj"}
    assert "reads out_proj.weight itself" in reasons["att.out_proj"]
    with pytest.warns(FloatModulesWarning, match=r"'att.out_proj' \(NonDynamicallyQuantizableLinear, 256 weights"):
        discover(Attention())


@pytest.mark.parametrize("backend", BACKENDS)
def test_discover_apply_forward_works_with_multihead_attention(backend: str) -> None:
    model = Attention().eval()
    space = discover_quietly(model, pin_first_last=None)
    plan = BitPlan(bits={n: 4 for n in space.names})
    x = torch.randn(2, 5, 8)
    with torch.no_grad():
        got = apply(model, plan, backend=backend)(x)  # crashed: 'QuantLinear' object has no attribute 'weight'
        reference = fake_quantize_model(model, plan)(x)
    assert torch.allclose(got, reference, atol=1e-5)


def test_a_plan_naming_out_proj_is_refused_with_the_reason() -> None:
    with pytest.raises(PlanMismatchError, match=r"not quantizable=\['att.out_proj'\] \('att.out_proj': nn.MultiheadAttention"):
        check_plan_for_model(BitPlan(bits={"embed": 8, "att.out_proj": 4, "head": 8}), Attention())


def test_transformer_encoder_layer_feed_forward_stays_float_and_runs_packed() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0),
                          nn.Flatten(), nn.Linear(5 * 16, 3)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FloatModulesWarning)
        space = discover(model, pin_first_last=None)
    assert space.names == ("0", "3")
    assert {"1.linear1", "1.linear2", "1.self_attn.out_proj"} <= {f.name for f in space.float_modules}
    x = torch.randn(2, 5, 8)
    with torch.no_grad():  # eval + batch_first takes the fast path, which reads linear1.weight
        assert apply(model, BitPlan(bits={"0": 4, "3": 4}), backend="torch")(x).shape == (2, 3)
