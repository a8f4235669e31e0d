"""Architecture of the CIFAR ResNets: sizes, names, shortcuts, picklability."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from mpsearch.core.errors import UnknownNameError
from mpsearch.zoo.models import EMBEDDED_RESNET20
from mpsearch.zoo.resnet import RESNET_DEPTHS, PadShortcut, cifar_resnet

# Parameter counts of He et al.'s CIFAR ResNets with option-A shortcuts (0.27 M ... 0.85 M).
PARAMS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("depth", sorted(PARAMS))
def test_param_count_and_output_shape(depth: int) -> None:
    model = cifar_resnet(depth)
    assert n_params(model) == PARAMS[depth]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert len(model.layer1) == len(model.layer3) == RESNET_DEPTHS[depth]


def test_paper_sizes() -> None:
    assert n_params(cifar_resnet(20)) / 1e6 == pytest.approx(0.27, abs=0.005)
    assert n_params(cifar_resnet(56)) / 1e6 == pytest.approx(0.85, abs=0.005)


def test_state_dict_keys_match_checkpoint() -> None:
    reference = torch.load(EMBEDDED_RESNET20, map_location="cpu", weights_only=True)
    model_keys = {k for k in cifar_resnet(20).state_dict() if not k.endswith("num_batches_tracked")}
    assert model_keys == set(reference)
    assert "layer1.0.conv1.weight" in model_keys and "linear.weight" in model_keys


def test_convs_have_no_bias() -> None:
    convs = [m for m in cifar_resnet(20).modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19
    assert all(c.bias is None for c in convs)


def test_pad_shortcut_subsamples_and_zero_pads() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0
    assert list(PadShortcut(16).parameters()) == []


def test_model_pickles_and_deepcopies() -> None:
    model = cifar_resnet(20).eval()
    x = torch.randn(1, 3, 32, 32)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), model(x))


def test_fresh_model_trains() -> None:
    model = cifar_resnet(20).train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(dim=1).mean()
    loss.backward()
    assert model.conv1.weight.grad is not None


def test_unknown_depth() -> None:
    with pytest.raises(UnknownNameError, match=r"20, 32, 44, 56.*depth=18"):
        cifar_resnet(18)
