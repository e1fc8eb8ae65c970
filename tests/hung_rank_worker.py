"""Test helper launched by torchrun: runs main.py's ``main``; rank 1 stops itself with SIGSTOP
during its first training step (as a hung GPU or a frozen node would), so that the other rank's
next collective times out (``--dist_timeout``)."""

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import main as main_module  # noqa: E402
from util.distributed import get_rank  # noqa: E402

_real = main_module.train_steps


def _stopping(*a, **k):
    for it, scalars in _real(*a, **k):
        if get_rank() == 1:
            sys.stderr.write(f"rank 1 stops itself (pid {os.getpid()})\n")  # print is silenced off rank 0
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGSTOP)
        yield it, scalars


main_module.train_steps = _stopping

if __name__ == "__main__":
    main_module.main(main_module.get_args_parser().parse_args(sys.argv[1:]))
