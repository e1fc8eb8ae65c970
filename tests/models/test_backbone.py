"""Backbone: frozen stages and normalisation as officially, trainable-from-scratch option,
dilation, returned stages and masks, weight loading."""

import pytest
import torch
from torch import nn

from models.backbone import Backbone, BackboneConfig, FrozenBatchNorm2d, build_backbone
from util.misc import nested_tensor_from_tensor_list


def test_official_freezing():
    bb = Backbone("resnet18", train_backbone=True, return_interm_layers=False, dilation=False)
    trainable = {n.split(".")[1] for n, p in bb.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bb.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    frozen = Backbone("resnet18", train_backbone=False, return_interm_layers=False, dilation=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_train_all_layers_learns_normalisation():
    bb = Backbone("resnet18", True, False, False, train_all_layers=True)
    assert all(p.requires_grad for p in bb.parameters())
    assert any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())


def test_returned_stages_masks_and_strides():
    joiner = build_backbone(BackboneConfig(name="resnet18", return_layers=("layer2", "layer3", "layer4")))
    nt = nested_tensor_from_tensor_list([torch.rand(3, 64, 96), torch.rand(3, 32, 64)])
    feats, pos = joiner(nt)
    assert [f.tensors.shape[1] for f in feats] == [128, 256, 512] == joiner.feature_channels
    assert joiner.strides == [8, 16, 32]
    for f, p in zip(feats, pos):
        assert f.mask.shape == f.tensors.shape[:1] + f.tensors.shape[2:]
        assert p.shape[2:] == f.tensors.shape[2:]
    m = feats[0].mask[1]  # second image: 32x64 valid of 64x96 -> 4x8 valid of 8x12 at stride 8
    assert not m[:4, :8].any() and m[4:].all() and m[:, 8:].all()


def test_dilation():
    bb = Backbone("resnet50", True, False, dilation=True)
    out = bb(nested_tensor_from_tensor_list([torch.rand(3, 64, 64)]))
    assert out["0"].tensors.shape[-2:] == (4, 4)  # stride 16
    with pytest.raises(ValueError, match="--dilation"):
        Backbone("resnet18", True, False, dilation=True)


def test_weights_from_local_file(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18()
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    bb = Backbone("resnet18", True, False, False, weights=str(path))
    torch.testing.assert_close(bb.body.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    torch.testing.assert_close(bb.body.bn1.running_var, ref.bn1.running_var)
    with pytest.raises(FileNotFoundError, match="--backbone_weights"):
        Backbone("resnet18", True, False, False, weights=str(tmp_path / "nope.pth"))


def test_offline_download_gives_clear_error(monkeypatch):
    import urllib.error

    import torchvision.models

    def fail(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.__class__, "get_state_dict", fail)
    with pytest.raises(RuntimeError, match="--backbone_weights"):
        Backbone("resnet18", True, False, False, weights="torchvision")
