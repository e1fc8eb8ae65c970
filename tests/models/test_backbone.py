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


def _randomised(joiner: nn.Module) -> nn.Module:
    """Non-trivial frozen statistics (default ones make BatchNorm almost the identity)."""
    torch.manual_seed(0)
    for m in joiner.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    return joiner


def test_per_image_features_do_not_depend_on_the_batch():
    """--backbone_per_image: each image's features (every returned stage, odd sizes included) are
    those of the image alone, in any batch; the official padded batch differs near the borders;
    images of one size in one batch give the batched result; gradients reach the trained stages."""
    layers = ("layer2", "layer3", "layer4")
    batched = _randomised(build_backbone(BackboneConfig(name="resnet18", return_layers=layers)))
    per_image = build_backbone(BackboneConfig(name="resnet18", return_layers=layers, per_image=True))
    per_image.load_state_dict(batched.state_dict())
    torch.manual_seed(1)
    images = [torch.rand(3, 97, 130), torch.rand(3, 160, 64), torch.rand(3, 97, 130)]
    feats, pos = per_image(nested_tensor_from_tensor_list(images))
    official, _ = batched(nested_tensor_from_tensor_list(images))
    for i, image in enumerate(images):
        alone, alone_pos = batched(nested_tensor_from_tensor_list([image]))
        for level, (f, f_alone, p, p_alone, f_official) in enumerate(zip(feats, alone, pos, alone_pos, official)):
            h, w = f_alone.tensors.shape[-2:]
            assert not f.mask[i, :h, :w].any() and f.mask[i, h:].all() and f.mask[i, :, w:].all()
            torch.testing.assert_close(f.tensors[i, :, :h, :w], f_alone.tensors[0], rtol=1e-5, atol=1e-5)
            assert not f.tensors[i, :, h:].any() and not f.tensors[i, :, :, w:].any()  # zeros on the padding
            torch.testing.assert_close(p[i, :, :h, :w], p_alone[0])  # the position encoding follows the mask
            if i == 1 and level == 0:  # the official batch: the padding's activations reach the borders
                assert (f_official.tensors[i, :, :h, :w] - f_alone.tensors[0]).abs().max() > 1e-3
    same = [torch.rand(3, 64, 96), torch.rand(3, 64, 96)]
    for f, f_official in zip(
        per_image(nested_tensor_from_tensor_list(same))[0], batched(nested_tensor_from_tensor_list(same))[0]
    ):
        assert torch.equal(f.tensors, f_official.tensors) and torch.equal(f.mask, f_official.mask)
    feats[-1].tensors.sum().backward()
    trained = [p for n, p in per_image.named_parameters() if "layer4" in n]
    assert trained and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_per_image_refuses_learning_batchnorm():
    with pytest.raises(ValueError, match="--backbone_per_image needs the frozen BatchNorm"):
        BackboneConfig(name="resnet18", train_all_layers=True, per_image=True)


def test_per_image_detr_outputs_do_not_depend_on_the_batch():
    """With --backbone_per_image DETR's outputs for an image are those of the image alone (up to
    rounding), whatever the batch pads it to; without, they are not. (Deformable DETR's input
    projections normalise over the padded map, GroupNorm, as officially: its outputs still depend
    on the padding.)"""
    from golden import golden_args

    from models import build_model
    from util.config import resolve

    config = {"backbone": "resnet18", "hidden_dim": 32, "nheads": 2, "enc_layers": 1, "dec_layers": 1}
    args = golden_args(config, num_classes=3, num_queries=5, dim_feedforward=32)
    torch.manual_seed(0)
    model = _randomised(build_model(resolve(args))[0]).eval()
    torch.manual_seed(1)
    small, large = torch.rand(3, 70, 90), torch.rand(3, 128, 160)
    moved = {}
    for per_image in (False, True):
        model.backbone[0].per_image = per_image
        with torch.no_grad():
            alone, batched = model([small]), model([large, small])
        moved[per_image] = max((batched[k][1] - alone[k][0]).abs().max().item() for k in ("pred_logits", "pred_boxes"))
    assert moved[True] < 1e-4 < moved[False], moved
