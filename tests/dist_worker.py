"""Test helper launched by torchrun: runs main.py's ``main`` and saves this rank's final weights.

The wrapper around ``train_one_epoch`` only records which model is being trained; the training
itself is main.py's, unchanged.
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main as main_module  # noqa: E402
from util.distributed import get_rank  # noqa: E402

seen = {}
_real = main_module.train_one_epoch


def _recording(model, *a, **k):
    seen["model"] = model
    return _real(model, *a, **k)


main_module.train_one_epoch = _recording

if __name__ == "__main__":
    out_dir, argv = sys.argv[1], sys.argv[2:]
    args = main_module.get_args_parser().parse_args(argv)
    main_module.main(args)
    model = seen["model"]
    model = getattr(model, "module", model)
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, Path(out_dir) / f"rank{get_rank()}.pth")
