"""Padding of image batches into NestedTensors and the accepted model input forms."""

import pytest
import torch

from util.misc import NestedTensor, collate_fn, nested_tensor_from_tensor_list, to_nested_tensor


def test_padding_and_mask():
    a, b = torch.rand(3, 4, 6), torch.rand(3, 5, 2)
    nt = nested_tensor_from_tensor_list([a, b])
    assert nt.tensors.shape == (2, 3, 5, 6)
    assert nt.mask.shape == (2, 5, 6)
    torch.testing.assert_close(nt.tensors[0, :, :4, :6], a)
    torch.testing.assert_close(nt.tensors[1, :, :5, :2], b)
    assert not nt.mask[0, :4, :6].any() and nt.mask[0, 4:].all()
    assert not nt.mask[1, :, :2].any() and nt.mask[1, :, 2:].all()
    assert (nt.tensors[0, :, 4:] == 0).all()


def test_model_input_forms():
    batch = torch.rand(2, 3, 8, 8)
    nt = to_nested_tensor(batch)
    assert nt.tensors is batch and not nt.mask.any()
    nt2 = to_nested_tensor([torch.rand(3, 8, 8), torch.rand(3, 6, 7)])
    assert nt2.tensors.shape == (2, 3, 8, 8)
    assert to_nested_tensor(nt2) is nt2
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        nested_tensor_from_tensor_list([torch.rand(8, 8)])
    with pytest.raises(TypeError):
        to_nested_tensor("image.png")


def test_collate():
    batch = [(torch.rand(3, 4, 4), {"id": 1}), (torch.rand(3, 2, 5), {"id": 2})]
    samples, targets = collate_fn(batch)
    assert isinstance(samples, NestedTensor) and samples.tensors.shape == (2, 3, 4, 5)
    assert targets == ({"id": 1}, {"id": 2})


@pytest.mark.parametrize("model", ["detr", "deformable_detr", "detr_masks"])
def test_torchscript_refused_with_one_clear_error(model):
    """TorchScript is not supported (deprecated by PyTorch): the model, its backbone and position
    encoding, which the official code scripted, each say so instead of failing in the compiler."""
    import warnings

    from main import get_args_parser, resolve_args
    from models import build_model

    flags = ["--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2",
             "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_classes", "3"]  # fmt: skip
    flags += ["--masks"] if model == "detr_masks" else ["--model", model, "--num_feature_levels", "1"]
    net = build_model(resolve_args(get_args_parser().parse_args(flags)))[0]
    joiner = (net.detr if model == "detr_masks" else net).backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's own deprecation notice
        for module in (net, joiner, joiner[0], joiner[1]):
            with pytest.raises(RuntimeError, match=r"torch.jit.script is not supported .* torch.export"):
                torch.jit.script(module)
