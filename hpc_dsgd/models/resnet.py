"""CIFAR ResNet-20 (He et al. 2016, Sec. 4.2) with a width multiplier."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _scaled(channels: int, width: float) -> int:
    """Channel count ``channels * width`` rounded, never below 1."""
    return max(1, int(round(channels * width)))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1-conv+BN projection shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            # projection shortcut ("option B") whenever the shape changes
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: stem, three stages of ``n`` blocks, avg pool, linear."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int,
        width: float,
        in_channels: int,
        zero_init_residual: bool,
    ) -> None:
        super().__init__()
        c1, c2, c3 = (_scaled(c, width) for c in (16, 32, 64))
        self.conv1 = nn.Conv2d(in_channels, c1, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.layer1 = self._stage(c1, c1, blocks_per_stage, stride=1)
        self.layer2 = self._stage(c1, c2, blocks_per_stage, stride=2)
        self.layer3 = self._stage(c2, c3, blocks_per_stage, stride=2)
        self.fc = nn.Linear(c3, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            # Goyal et al. 2017: each residual branch starts as zero, so blocks start as identity
            for m in self.modules():
                if isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        """``blocks`` BasicBlocks; only the first one may downsample / change width."""
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = out.mean(dim=(2, 3))  # global average pool (a mean: deterministic backward on CUDA)
        return self.fc(out)


def resnet20(
    num_classes: int = 10,
    width: float = 1.0,
    in_channels: int = 3,
    zero_init_residual: bool = True,
) -> nn.Module:
    """ResNet-20 for CIFAR (about 0.27 M parameters at ``width=1``)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return CifarResNet(3, num_classes, width, in_channels, zero_init_residual)
