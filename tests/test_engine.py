"""engine.train_one_epoch: non-finite gradients and loss terms stop before the optimizer step
with the place named; learning BatchNorm statistics are put back to their values before the step;
gradient accumulation over k batches equals one batch k times larger (softmax and focal losses)."""

import pytest
import torch
from torch import nn

from engine import NonFiniteError, train_one_epoch, train_steps
from models.detr import SetCriterion
from models.matcher import HungarianMatcher
from util.logging import MetricLogger
from util.misc import nested_tensor_from_tensor_list
from util.train_state import TrainState


class TinyDetector(nn.Module):
    """Image -> 4 queries of 3 logits and 4 box coordinates, through a learning BatchNorm."""

    def __init__(self, batch_norm: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=4)
        self.bn = nn.BatchNorm2d(8) if batch_norm else nn.Identity()
        self.head = nn.Linear(8, 4 * 7)

    def forward(self, samples):
        x = self.bn(self.conv(samples.tensors)).mean((2, 3))
        out = self.head(x).view(-1, 4, 7)
        return {"pred_logits": out[..., :3], "pred_boxes": out[..., 3:].sigmoid()}


def _loader(n: int = 3):
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(n):
        images = [torch.rand(3, 32, 32, generator=g) for _ in range(2)]
        targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]]),
                    "image_id": torch.tensor([10 * i + j])} for j in range(2)]  # fmt: skip
        batches.append((nested_tensor_from_tensor_list(images), targets))
    return batches


def _criterion() -> SetCriterion:
    return SetCriterion(2, HungarianMatcher(1, 5, 2), {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}, 0.1,
                        ["labels", "boxes", "cardinality"])  # fmt: skip


def test_nan_gradient_stops_before_the_step_and_names_the_parameter():
    torch.manual_seed(0)
    model = TinyDetector()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    calls = []

    def poison(grad):
        calls.append(1)
        return grad * float("nan") if len(calls) == 2 else grad

    model.head.weight.register_hook(poison)
    before = {}
    state, logger = TrainState(model, optimizer), MetricLogger()
    with pytest.raises(NonFiniteError) as e:
        for _ in train_steps(model, _criterion(), _loader(), state, torch.device("cpu"), 0, 0.1, logger):
            before.update({k: v.clone() for k, v in model.state_dict().items()})
    assert "iteration 1: gradients of head.weight" in str(e.value)
    for k, v in model.state_dict().items():  # weights and BatchNorm statistics of after step 0
        assert torch.equal(v, before[k]), k


def test_nan_loss_term_is_named_with_the_images():
    model = TinyDetector()
    criterion = _criterion()
    real = criterion.forward
    criterion.forward = lambda o, t, **k: {**real(o, t, **k), "loss_giou": torch.tensor(float("nan"))}
    with pytest.raises(NonFiniteError) as e:
        train_one_epoch(model, criterion, _loader(1), TrainState(model, torch.optim.SGD(model.parameters(), lr=0.1)),
                        torch.device("cpu"), 3)  # fmt: skip
    assert str(e.value).startswith("non-finite values at epoch 3, iteration 0: loss term(s) loss_giou; images [0, 1]")


@pytest.mark.parametrize("focal", [False, True], ids=["softmax", "focal"])
def test_gradient_accumulation_equals_a_larger_batch(focal):
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 32, 32, generator=g) for _ in range(4)]
    counts = [1, 3, 0, 2]  # different box counts per image: the normalisation must span the group
    targets = [{"labels": torch.randint(0, 2, (n,), generator=g), "image_id": torch.tensor([i]),
                "boxes": torch.rand(n, 2, generator=g).mul(0.5).add(0.25).repeat(1, 2).mul(torch.tensor([1, 1, 0.3, 0.3]))}
               for i, n in enumerate(counts)]  # fmt: skip
    weight_dict = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2}
    criterion = SetCriterion(2, HungarianMatcher(1, 5, 2), weight_dict, 0.1, ["labels", "boxes", "cardinality"],
                             focal_alpha=0.25 if focal else None)  # fmt: skip
    results = []
    for accum, size in ((1, 4), (2, 2), (4, 1)):
        torch.manual_seed(0)
        model = TinyDetector(batch_norm=False)
        batches = [
            (nested_tensor_from_tensor_list(images[i : i + size]), targets[i : i + size]) for i in range(0, 4, size)
        ]
        stats = train_one_epoch(model, criterion, batches, TrainState(model, torch.optim.SGD(model.parameters(), lr=1.0)),
                                torch.device("cpu"), 0, grad_accum_steps=accum)  # fmt: skip
        results.append((model.state_dict(), stats["loss"]))
    (ref, ref_loss), *others = results
    for state, loss in others:
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        for k, v in ref.items():
            torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6)
