"""Test helper: ``python tests/fault_run.py FLAGS...`` runs ``python main.py FLAGS...`` with the fault
named by the environment variable ``FAULT`` injected: ``enospc``, every checkpoint write fails as
on a full disk (``OSError`` ENOSPC from ``torch.save``)."""

import errno
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

fault = os.environ["FAULT"]
if fault == "enospc":

    def _full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    torch.save = _full_disk
else:
    raise SystemExit(f"unknown FAULT {fault!r}")

sys.argv = [str(ROOT / "main.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
