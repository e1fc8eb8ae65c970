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


class _Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        target = {
            "boxes": torch.rand(3, 4),
            "labels": torch.tensor([i, 2, 3]),
            "iscrowd": torch.zeros(3, dtype=torch.uint8),
            "masks": torch.ones(3, 100, 100, dtype=torch.bool) * (i % 2 == 0),  # 30 KB: by value
            "big": torch.full((300, 100), float(i)),  # 120 KB: shared memory
            "bf16": torch.ones(2, dtype=torch.bfloat16),  # no numpy dtype: shared memory
            "name": f"img{i}",
        }
        return torch.rand(3, 8, 8), target


def test_targets_pickle_small_tensors_by_value():
    """Targets reach the training process with the same values, dtypes and type, whether pickled
    directly or handed over by DataLoader workers; small tensors travel inside the pickle."""
    import io
    import pickle
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers the shared-memory reducers)

    from util.misc import Targets

    batch = [_Pairs()[i] for i in range(2)]
    _, targets = collate_fn(batch)
    assert isinstance(targets, Targets) and isinstance(targets, tuple)
    buffer = io.BytesIO()
    ForkingPickler(buffer, pickle.HIGHEST_PROTOCOL).dump(targets)
    restored = pickle.loads(buffer.getvalue())
    assert isinstance(restored, Targets) and len(restored) == 2
    for a, b in zip(targets, restored):
        assert a.keys() == b.keys() and a["name"] == b["name"]
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert len(buffer.getvalue()) > 2 * 30_000  # the masks are in the pickle, the 120 KB tensors are not
    assert len(buffer.getvalue()) < 2 * 120_000
    assert pickle.loads(pickle.dumps(Targets((1, 2)))) == (1, 2)  # not dicts: as a plain tuple

    loader = torch.utils.data.DataLoader(_Pairs(), batch_size=2, num_workers=1, collate_fn=collate_fn)
    for b, (samples, got) in enumerate(loader):
        assert isinstance(got, Targets) and samples.tensors.shape == (2, 3, 8, 8)
        for j, t in enumerate(got):
            i = 2 * b + j
            assert t["labels"].tolist() == [i, 2, 3] and t["big"].eq(i).all() and t["name"] == f"img{i}"
            assert t["masks"].all() == (i % 2 == 0) and t["iscrowd"].dtype == torch.uint8


@pytest.mark.parametrize("model", ["detr", "deformable_detr", "detr_masks"])
def test_torchscript_refused_with_one_clear_error(model):
    """TorchScript is not supported (deprecated by PyTorch): the model, its backbone and position
    encoding, which the official code scripted, each say so instead of failing in the compiler."""
    import warnings

    from models import build_model
    from util.config import get_args_parser, resolve

    flags = ["--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads", "2",
             "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_classes", "3"]  # fmt: skip
    flags += {
        "detr_masks": ["--masks"],
        "detr": [],
        "deformable_detr": ["--model", model, "--num_feature_levels", "1"],
    }[model]
    net = build_model(resolve(get_args_parser().parse_args(flags)))[0]
    joiner = (net.detr if model == "detr_masks" else net).backbone
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's own deprecation notice
        for module in (net, joiner, joiner[0], joiner[1]):
            with pytest.raises(RuntimeError, match=r"torch.jit.script is not supported .* torch.export"):
                torch.jit.script(module)
