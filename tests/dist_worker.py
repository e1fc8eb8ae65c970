"""Test helper launched by torchrun: runs main.py's ``main`` and saves this rank's weights as they
were when training started (``rank{r}_initial.pth``) and at the end (``rank{r}.pth``).

The wrapper around ``train_steps`` only records the model being trained and copies its
weights before the first epoch; the training itself is main.py's, unchanged.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main as main_module  # noqa: E402
from util.distributed import get_rank  # noqa: E402

seen = {}
_real = main_module.train_steps


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    model = getattr(model, "module", model)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _recording(model, *a, **k):
    seen["model"] = model
    seen.setdefault("initial", _weights(model))
    return _real(model, *a, **k)


main_module.train_steps = _recording

if __name__ == "__main__":
    out_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    args = main_module.get_args_parser().parse_args(argv)
    main_module.main(args)
    torch.save(seen["initial"], out_dir / f"rank{get_rank()}_initial.pth")
    torch.save(_weights(seen["model"]), out_dir / f"rank{get_rank()}.pth")
