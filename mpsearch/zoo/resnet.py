"""CIFAR-10 ResNets of He et al. (2016), depths 20, 32, 44 and 56.

The network is a 3x3 stem conv (16 channels), three stages of ``n`` basic
blocks (16, 32 and 64 channels; the second and third stage halve the
resolution in their first block), global average pooling and a 64 -> 10
linear classifier, with ``depth = 6 n + 2``.

Shortcuts follow "option A" of the paper: where a block changes shape, the
identity path subsamples every second pixel and zero-pads the new channels,
so shortcuts carry no weights and every weight in the model belongs to a conv,
a batch norm or the final linear layer. Module names (``conv1``, ``bn1``,
``layer1.0.conv1``, ..., ``linear``) match the published checkpoints of
akamaster/pytorch_resnet_cifar10 once their ``module.`` prefix is stripped,
so those weights load with ``strict=True``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mpsearch.core.errors import UnknownNameError

__all__ = ["RESNET_DEPTHS", "BasicBlock", "CifarResNet", "PadShortcut", "cifar_resnet"]

#: Supported depths and the number of basic blocks per stage for each.
RESNET_DEPTHS: dict[int, int] = {20: 3, 32: 5, 44: 7, 56: 9}


class PadShortcut(nn.Module):
    """Weight-free option-A shortcut: stride-2 subsampling plus channel zero-padding.

    The ``extra`` new channels are split evenly before and after the existing
    ones, which is the layout the published checkpoints were trained with.
    A module rather than a lambda so the model pickles and deep-copies.
    """

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.before = extra_channels // 2
        self.after = extra_channels - self.before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]
        # F.pad pads the last dims first: (W_left, W_right, H_top, H_bottom, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, self.before, self.after))

    def extra_repr(self) -> str:
        return f"pad_channels=({self.before}, {self.after}), stride=2"


class BasicBlock(nn.Module):
    """Two 3x3 conv + batch-norm layers with a residual connection."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride != 1 or in_channels != out_channels:
            self.shortcut = PadShortcut(out_channels - in_channels)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with ``blocks_per_stage`` basic blocks in each of its 3 stages."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # Kaiming-normal for the layers followed by ReLU, as in He et al.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


def cifar_resnet(depth: int) -> CifarResNet:
    """Build a freshly initialised CIFAR-10 ResNet of the given depth.

    Example:
        >>> model = cifar_resnet(20)
        >>> sum(p.numel() for p in model.parameters())
        269722
    """
    if depth not in RESNET_DEPTHS:
        known = ", ".join(str(d) for d in RESNET_DEPTHS)
        raise UnknownNameError(
            f"`depth` must be one of the CIFAR ResNet depths ({known}), but got depth={depth!r}. "
            "Pass one of those depths."
        )
    return CifarResNet(RESNET_DEPTHS[depth])
