"""timm's models, structurized: their nn.Linear layers (ViT's, Swin's) and 1x1 convolutions (ConvNeXt's MLPs, a
ResNet bottleneck's, its strided downsample), replaced, trained a step, compiled and reloaded by structurize_as.
Skipped where timm is not installed: it needs torchvision, which has no build beside CI's torch 2.13.0 CPU wheel
(run here under torch 2.14.1 and torchvision 0.29.1, where both lie on disk)."""

from __future__ import annotations

import copy

import pytest
import torch

import kt.nn as knn

timm = pytest.importorskip("timm")

MODELS = {  # small configurations of random weights: nothing downloaded
    "vit": (dict(model_name="vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2), (2, 3, 32, 32)),
    "convnext": (dict(model_name="convnext_atto", depths=(1, 1, 1, 1)), (2, 3, 64, 64)),
    "resnet": (dict(model_name="resnet50", layers=(1, 1, 1, 1)), (2, 3, 64, 64)),
}


def rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


@pytest.mark.parametrize("name", MODELS)
def test_a_structurized_timm_model_computes_as_before_trains_compiles_and_reloads(name):
    kwargs, shape = MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(pretrained=False, num_classes=10, **kwargs).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        before = model(x)
    fresh, dense = copy.deepcopy(model), copy.deepcopy(model)
    replaced = knn.structurize(dense, {"*": knn.DenseLinear.from_dense})
    pointwise = [n for n, m in dense.named_modules() if isinstance(m, knn.Pointwise)]
    assert replaced and (pointwise or name == "vit")
    with torch.no_grad():
        assert rel(dense(x), before) < 1e-5

    def rule(_, linear):
        if min(linear.in_features, linear.out_features) >= 16:
            return knn.LowRankLinear.from_dense(linear, rank=4)
        return knn.DenseLinear.from_dense(linear)

    assert knn.structurize(model, rule) == replaced
    model.train()
    model(x).square().mean().backward()
    torch.optim.SGD(model.parameters(), lr=0.01).step()
    model.eval()
    with torch.no_grad():
        eager = model(x)
        assert rel(torch.compile(model, backend="aot_eager")(x), eager) < 1e-5
    knn.structurize_as(fresh, model.state_dict(), dense="*")
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), eager)
