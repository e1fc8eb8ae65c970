"""timm backbones (``--backbone timm:<name>``): every family builds into DETR and Deformable DETR
and trains (forward and backward on tiny inputs); freezing and frozen BatchNorm as the official
ResNets; weights from a local file; clear errors when timm or the network is missing."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from models import build_model
from models.backbone import Backbone, BackboneConfig, build_backbone
from util.config import get_args_parser, resolve
from util.misc import nested_tensor_from_tensor_list

timm = pytest.importorskip("timm")
from models.timm_backbone import TimmBackbone  # noqa: E402

TINY = ["--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2", "--enc_layers", "1", "--dec_layers", "1",
        "--dim_feedforward", "32", "--num_queries", "4", "--num_classes", "3", "--device", "cpu"]  # fmt: skip
# The smallest member of each family the issue names (resnet50, convnext_tiny, efficientnet_b3): same code paths.
FAMILIES = ["resnet18", "convnext_atto", "efficientnet_b0"]


@pytest.mark.parametrize("model", ["detr", "deformable_detr"])
@pytest.mark.parametrize("name", FAMILIES)
def test_forward_backward(name: str, model: str) -> None:
    torch.manual_seed(0)
    extra = ["--num_feature_levels", "4"] if model == "deformable_detr" else []
    args = resolve(get_args_parser().parse_args([*TINY, "--model", model, "--backbone", f"timm:{name}", *extra]))
    detector, criterion, _ = build_model(args)
    body = detector.backbone[0]
    assert isinstance(body, TimmBackbone) and body.strides == ([32] if model == "detr" else [8, 16, 32])
    detector.train()
    out = detector([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.3, 0.4]])}] * 2
    losses = criterion(out, targets)
    total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
    assert torch.isfinite(total)
    total.backward()
    trainable = [p for p in body.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable)
    assert any(not p.requires_grad for p in body.parameters())  # stem and first stage frozen


def test_official_freezing_semantics() -> None:
    tv = Backbone("resnet18", train_backbone=True, return_interm_layers=False, dilation=False)
    tm = TimmBackbone("timm:resnet18", train_backbone=True)
    # timm's ResNet is torchvision's: same parameter names, same frozen stages, frozen BatchNorm
    assert set(tm.body.state_dict()) == set(tv.body.state_dict())
    trainable = {n.split(".")[0] for n, p in tm.body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in tm.modules())
    assert not any(p.requires_grad for p in TimmBackbone("timm:resnet18", train_backbone=False).parameters())
    learning = TimmBackbone("timm:resnet18", train_backbone=True, train_all_layers=True)
    assert all(p.requires_grad for p in learning.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in learning.modules())
    eff = TimmBackbone("timm:efficientnet_b0", train_backbone=True, return_layers=("layer2", "layer3", "layer4"))
    frozen = {n.split(".")[0] + "." + n.split(".")[1] for n, p in eff.body.named_parameters() if not p.requires_grad}
    assert frozen == {"conv_stem.weight", "blocks.0", "blocks.1"}  # bn1 is a frozen buffer module
    assert eff.feature_channels == [40, 112, 320] and eff.strides == [8, 16, 32]


def test_masks_and_dilation() -> None:
    joiner = build_backbone(BackboneConfig(name="timm:resnet18", return_layers=("layer1", "layer2", "layer3", "layer4"),
                                           dilation=True))  # fmt: skip
    feats, pos = joiner(nested_tensor_from_tensor_list([torch.rand(3, 64, 64), torch.rand(3, 32, 48)]))
    assert joiner.strides == [4, 8, 16, 16] and [f.tensors.shape[-1] for f in feats] == [16, 8, 4, 4]
    assert feats[0].mask[1, :8, :12].logical_not().all() and feats[0].mask[1, 8:].all()


def test_per_image() -> None:
    """--backbone_per_image with a timm backbone: each image's features are those of the image alone."""
    torch.manual_seed(0)
    layers = ("layer2", "layer4")
    per_image = build_backbone(BackboneConfig(name="timm:resnet18", return_layers=layers, per_image=True)).eval()
    images = [torch.rand(3, 64, 64), torch.rand(3, 32, 48)]
    feats, _ = per_image(nested_tensor_from_tensor_list(images))
    alone, _ = per_image(nested_tensor_from_tensor_list(images[1:]))
    for f, f_alone in zip(feats, alone, strict=True):
        h, w = f_alone.tensors.shape[-2:]
        torch.testing.assert_close(f.tensors[1, :, :h, :w], f_alone.tensors[0], rtol=1e-5, atol=1e-5)
        assert not f.mask[1, :h, :w].any() and f.mask[1, h:].all() and not f.tensors[1, :, h:].any()


def test_weights_from_files(tmp_path) -> None:
    full = timm.create_model("resnet18", pretrained=False)
    torch.save(full.state_dict(), tmp_path / "r18.pth")
    bb = TimmBackbone("timm:resnet18", True, weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(bb.body.layer3[0].conv1.weight, full.layer3[0].conv1.weight)
    torch.testing.assert_close(bb.body.bn1.running_var, full.bn1.running_var)
    detr = {"model": {f"backbone.0.body.{k}": v + 1 for k, v in bb.body.state_dict().items()}}
    torch.save(detr, tmp_path / "detr.pth")
    from_detr = TimmBackbone("timm:resnet18", True, weights=str(tmp_path / "detr.pth"))
    torch.testing.assert_close(from_detr.body.layer4[1].conv2.weight, full.layer4[1].conv2.weight + 1)
    with pytest.raises(FileNotFoundError, match="--backbone_weights"):
        TimmBackbone("timm:resnet18", True, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        TimmBackbone("timm:no_such_net", True)
    with pytest.raises(ValueError, match="--backbone_weights timm needs a timm backbone"):
        build_backbone(BackboneConfig(name="resnet18", weights="timm"))


def test_offline_and_missing_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **k):
        if k.get("pretrained"):
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        raise AssertionError("pretrained weights were not requested")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(RuntimeError, match="could not fetch timm weights for resnet18.*Offline"):
        TimmBackbone("timm:resnet18", True, weights="timm")
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match="needs the 'timm' package"):
        TimmBackbone("timm:resnet18", True)
