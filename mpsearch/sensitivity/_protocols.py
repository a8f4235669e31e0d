"""Module shapes the estimators understand, by structure rather than by class.

An estimator that needs residual blocks or a ResNet's stage layout asks whether a module has the
parts it reads, so a user's own ResNet with the same parts works as the built-in
``mpsearch.zoo`` one does, and the estimators do not depend on the zoo.
"""

from __future__ import annotations

from torch import nn

BASIC_BLOCK_PARTS = ("conv1", "bn1", "conv2", "bn2", "shortcut")
RESNET_PARTS = ("conv1", "bn1", "layer1", "layer2", "layer3", "linear")


def is_basic_block(module: nn.Module) -> bool:
    """Two 3x3 conv + batch-norm pairs and a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""
    return (all(isinstance(getattr(module, a, None), nn.Module) for a in BASIC_BLOCK_PARTS)
            and isinstance(module.conv1, nn.Conv2d) and isinstance(module.conv2, nn.Conv2d)
            and isinstance(module.bn1, nn.BatchNorm2d) and isinstance(module.bn2, nn.BatchNorm2d))


def is_cifar_resnet(model: nn.Module) -> bool:
    """A stem conv + batch norm, three stages of basic blocks, global average pooling and a linear head."""
    if not all(isinstance(getattr(model, a, None), nn.Module) for a in RESNET_PARTS):
        return False
    stages = (model.layer1, model.layer2, model.layer3)
    return (isinstance(model.conv1, nn.Conv2d) and isinstance(model.linear, nn.Linear)
            and all(isinstance(s, nn.Sequential) and all(is_basic_block(b) for b in s) for s in stages))


__all__ = ["is_basic_block", "is_cifar_resnet"]
