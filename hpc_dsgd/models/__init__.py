"""Model registry."""

from __future__ import annotations

from typing import Callable

from torch import nn

from hpc_dsgd.models.cnn import small_cnn
from hpc_dsgd.models.resnet import resnet20

MODELS: dict[str, Callable[..., nn.Module]] = {"resnet20": resnet20, "small_cnn": small_cnn}


def build_model(name: str, num_classes: int, width: float) -> nn.Module:
    """Build model ``name``; deterministic given ``torch.manual_seed`` before the call."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {sorted(MODELS)}")
    return MODELS[name](num_classes=num_classes, width=width)


__all__ = ["MODELS", "build_model", "resnet20", "small_cnn"]
