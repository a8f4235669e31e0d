"""Shared fixtures: ResNet-20 built and traced once per test module."""

from __future__ import annotations

import pytest
import torch

from mpsearch.pricing.profile import trace_layers
from mpsearch.zoo.resnet import cifar_resnet


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return cifar_resnet(20).eval()


@pytest.fixture(scope="module")
def resnet20_shapes(resnet20):
    return trace_layers(resnet20, torch.zeros(1, 3, 32, 32))
