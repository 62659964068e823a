"""Serial tests of the model registry and ResNet-20."""

from __future__ import annotations

import pytest
import torch

from hpc_dsgd.models import MODELS, build_model, resnet20

torch.set_num_threads(1)


def test_parameter_count_width1() -> None:
    n = sum(p.numel() for p in resnet20().parameters())
    assert 0.26e6 <= n <= 0.28e6, n


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_output_shape(width: float) -> None:
    model = build_model("resnet20", num_classes=10, width=width)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_zero_init_residual() -> None:
    model = resnet20(zero_init_residual=True)
    assert all(torch.all(blk.bn2.weight == 0) for blk in model.modules() if hasattr(blk, "bn2"))
    model = resnet20(zero_init_residual=False)
    assert all(torch.all(blk.bn2.weight == 1) for blk in model.modules() if hasattr(blk, "bn2"))


def test_deterministic_construction() -> None:
    torch.manual_seed(123)
    a = build_model("resnet20", 10, 0.5).state_dict()
    torch.manual_seed(123)
    b = build_model("resnet20", 10, 0.5).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_model_refused() -> None:
    with pytest.raises(ValueError) as err:
        build_model("vgg11", 10, 1.0)
    assert "vgg11" in str(err.value)
    assert all(name in str(err.value) for name in MODELS)
