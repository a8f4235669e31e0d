"""`apply` with a packed backend names every unit it cannot pack, before changing anything;
the reference backend and units planned at 16 bits are unaffected (mpsearch/deploy/apply.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mpsearch.core.errors import PlanMismatchError
from mpsearch.core.plan import BitPlan
from mpsearch.deploy.apply import apply


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, groups=2), nn.Conv2d(8, 8, 3, groups=8, padding="same"),
                         nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect"), nn.Conv2d(8, 8, 3))


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_every_unpackable_unit_is_listed(backend: str) -> None:
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(PlanMismatchError) as err:
        apply(model, BitPlan(bits={"0": 4, "1": 4, "2": 4, "3": 4}), backend=backend)
    assert str(err.value) == (
        f"the {backend!r} backend needs Conv2d units with groups=1 and zero padding given as numbers, but 3 planned "
        "unit(s) are not: '0' (groups=2); '1' (groups=8, padding='same'); '2' (padding_mode='reflect'). Use "
        "backend='reference', or plan these units at 16 bits (they then stay in floating point)."
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reference_backend_and_float_units_work() -> None:
    x = torch.randn(1, 4, 10, 10)
    assert apply(net(), BitPlan(bits={"0": 4, "1": 4, "2": 4, "3": 4}))(x).shape == (1, 8, 6, 6)
    packed = apply(net(), BitPlan(bits={"0": 16, "1": 16, "2": 16, "3": 4}), backend="torch")
    assert [type(m).__name__ for m in packed] == ["Conv2d", "Conv2d", "Conv2d", "QuantConv2d"]
    assert packed(x).shape == (1, 8, 6, 6)
