"""Test helper: ``python tests/fault_run.py FLAGS...`` runs ``python main.py FLAGS...`` with one fault
injected, named by the environment variable ``FAULT``:

* ``free=N``: the file system of ``--output_dir`` reports N bytes free;
* ``enospc``: every checkpoint write fails as on a full disk (``OSError`` ENOSPC from ``torch.save``).
"""

import errno
import os
import runpy
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

fault = os.environ["FAULT"]
if fault.startswith("free="):
    _usage, _free = shutil.disk_usage, int(fault.removeprefix("free="))
    shutil.disk_usage = lambda path: _usage(path)._replace(free=_free)
elif fault == "enospc":

    def _full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    torch.save = _full_disk
else:
    raise SystemExit(f"unknown FAULT {fault!r}")

sys.argv = [str(ROOT / "main.py"), *sys.argv[1:]]
runpy.run_path(str(ROOT / "main.py"), run_name="__main__")
