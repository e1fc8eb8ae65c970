"""Run the official DETR / Deformable DETR code from a local clone, in the same process as this project.

The official code is never vendored: ``load_official(DIR)`` copies a clone (``--official DIR``,
e.g. ``git clone https://github.com/facebookresearch/detr``) to a temporary folder, imports it
unmodified and says what it adapts at run time. Both code bases have top-level modules of the same
names (``main``, ``models``, ...), so each keeps its own module objects (a ``CodeBase``, ``ours()``
for this project) and ``CodeBase.active()`` puts one set into ``sys.modules`` at a time.
"""

from __future__ import annotations

import argparse
import importlib
import runpy
import shutil
import sys
import tempfile
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
# This project's top-level modules (``benchmarks`` itself is the harness and always stays).
OUR_TOP_LEVEL = frozenset({"main", "engine", "hubconf", "models", "util", "datasets", "tools"})
MSDA_NAME = "MultiScaleDeformableAttention"
_REQUIRED = ("main.py", "engine.py", "models/__init__.py", "util/misc.py", "datasets/__init__.py")
_ALL_TOP_LEVEL: set[str] = set(OUR_TOP_LEVEL)


@dataclass
class CodeBase:
    """The module objects of one code base, importable by name only while ``active()``."""

    name: str
    root: Path
    top_level: frozenset[str]
    modules: dict[str, types.ModuleType] = field(default_factory=dict)
    kinds: frozenset[str] = frozenset({"detr", "deformable_detr"})  # the detectors it implements
    msda: str = "ours"  # official Deformable DETR: "compiled" op or "cpu stand-in"

    def __getitem__(self, module_name: str) -> types.ModuleType:
        if module_name not in self.modules:
            with self.active():
                importlib.import_module(module_name)
        return self.modules[module_name]

    def main_script(self) -> Any:
        """The code base's ``main.py``: the official one as its module ``main``; ours run as a script
        file (this project's ``main`` is imported by nothing but ``run_with_submitit.py``)."""
        if self.name != "ours":
            return self["main"]
        with self.active():
            return types.SimpleNamespace(**runpy.run_path(str(self.root / "main.py"), run_name="detr_main"))

    def _owns(self, module: types.ModuleType) -> bool:
        file = getattr(module, "__file__", None)
        return file is not None and Path(file).resolve().is_relative_to(self.root)

    @contextmanager
    def active(self) -> Iterator[CodeBase]:
        """Within the block, ``import models`` (etc.) gives this code base's modules."""
        stash = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] in _ALL_TOP_LEVEL}
        sys.modules.update(self.modules)
        sys.path.insert(0, str(self.root))
        try:
            yield self
        finally:
            sys.path.remove(str(self.root))
            for k in list(sys.modules):
                if k.split(".")[0] in _ALL_TOP_LEVEL:
                    module = sys.modules.pop(k)
                    if k in self.modules or self._owns(module):
                        self.modules[k] = module
            sys.modules.update(stash)


def ours() -> CodeBase:
    """This project, with the modules already imported (more are imported on demand)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    for name in ("engine", "models", "util.config", "util.misc", "datasets"):
        importlib.import_module(name)
    modules = {k: m for k, m in sys.modules.items() if k.split(".")[0] in OUR_TOP_LEVEL}
    return CodeBase("ours", ROOT, OUR_TOP_LEVEL, modules)


def _msda_stub() -> types.ModuleType:
    """``MultiScaleDeformableAttention`` on the CPU: the official pure-PyTorch core, set later."""
    stub = types.ModuleType(MSDA_NAME)
    stub.__doc__ = "CPU stand-in for Deformable DETR's compiled op (benchmarks/official.py)"
    stub.core = None  # the official ms_deform_attn_core_pytorch, once imported

    def _core(value, shapes, locations, weights):  # type: ignore[no-untyped-def]
        # The official core iterates over the shapes; plain ints avoid 0-d tensors in split sizes.
        return stub.core(value, [(int(h), int(w)) for h, w in shapes.tolist()], locations, weights)

    def ms_deform_attn_forward(value, shapes, level_start_index, locations, weights, im2col_step):  # type: ignore[no-untyped-def]
        return _core(value, shapes, locations, weights)

    def ms_deform_attn_backward(value, shapes, level_start_index, locations, weights, grad_output, im2col_step):  # type: ignore[no-untyped-def]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
            out = _core(leaves[0], shapes, leaves[1], leaves[2])
            return tuple(torch.autograd.grad(out, leaves, grad_output))

    stub.ms_deform_attn_forward = ms_deform_attn_forward
    stub.ms_deform_attn_backward = ms_deform_attn_backward
    return stub


def _not_main_process() -> bool:
    return False


def load_official(src: str | Path, workdir: str | Path | None = None) -> CodeBase:
    """Copy the clone ``src`` into ``workdir`` (default: a new temporary folder, see ``cleanup``)
    and import it as a ``CodeBase``; ``kinds`` says which detector it implements (``detr`` with
    ``models/detr.py``, ``deformable_detr`` with ``models/deformable_detr.py``).

    Imports made while a code base is active (lazy ones included) resolve to its own files. What
    makes the official code run on a current PyTorch on a CPU, without editing its files:

    * torchvision version check: Deformable DETR's ``util/misc.py`` compares
      ``float(torchvision.__version__[:3])`` with 0.5 and 0.7 (``"0.29.1"[:3]`` is ``0.2``) and then
      imports helpers removed from torchvision long ago; ``torchvision.__version__`` reads ``"0.9.0"``
      while the official modules are imported, and is restored afterwards.
    * ImageNet download: both backbones build torchvision's ResNet with
      ``pretrained=is_main_process()``; the official ``models.backbone.is_main_process`` is replaced
      by a function returning False (benchmarks copy the same weights into both models anyway).
    * Compiled deformable-attention op: Deformable DETR imports ``MultiScaleDeformableAttention``
      (its CUDA extension). On a GPU with the op compiled and installed (``models/ops/make.sh``) the
      real one is used; otherwise a module of that name is put into ``sys.modules`` whose
      ``ms_deform_attn_forward`` is the official code's own pure-PyTorch ``ms_deform_attn_core_pytorch``
      and whose ``ms_deform_attn_backward`` differentiates it by autograd (``_msda_stub``).
    * CUDA-only prefetcher: Deformable DETR's ``train_one_epoch`` creates ``data_prefetcher(...,
      prefetch=True)``, which opens a CUDA stream; on a CPU device the official
      ``engine.data_prefetcher`` is wrapped to pass ``prefetch=False`` (its own CPU path).
    """
    src = Path(src).expanduser().resolve()
    missing = [p for p in _REQUIRED if not (src / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"--official {src}: not a clone of facebookresearch/detr or fundamentalvision/Deformable-DETR "
            f"(missing {', '.join(missing)})"
        )
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="official_"))
        _TEMP_DIRS.append(workdir)
    root = (Path(workdir) / src.name).resolve()
    shutil.copytree(src, root, ignore=shutil.ignore_patterns(".git", "__pycache__", "*.pyc", "figs", "docs", "d2"))
    kinds = frozenset(k for k in ("detr", "deformable_detr") if (root / "models" / f"{k}.py").is_file())
    top_level = {p.stem for p in root.glob("*.py")} | {p.parent.name for p in root.glob("*/__init__.py")}
    top_level.add(MSDA_NAME)
    _ALL_TOP_LEVEL.update(top_level)
    official = CodeBase(f"official {'/'.join(sorted(kinds))}", root, frozenset(top_level), kinds=kinds)

    import torchvision

    stub = _msda_stub()
    compiled = None
    if torch.cuda.is_available():
        try:
            compiled = importlib.import_module(MSDA_NAME)  # the official op, built and installed
        except ImportError:
            compiled = None
    version = torchvision.__version__
    with official.active():
        sys.modules[MSDA_NAME] = compiled or stub
        torchvision.__version__ = "0.9.0"
        try:
            for name in ("util.misc", "models", "datasets", "engine", "main"):
                importlib.import_module(name)
        finally:
            torchvision.__version__ = version
        official.modules[MSDA_NAME] = compiled or stub
    official.msda = "compiled" if compiled is not None else "cpu stand-in"
    leaked = [k for k, m in official.modules.items() if k != MSDA_NAME and not official._owns(m)]
    if leaked:
        raise RuntimeError(f"official code base imported modules from outside {root}: {leaked}")

    official["models.backbone"].is_main_process = _not_main_process  # no ImageNet download
    if (root / "models" / "ops" / "functions" / "ms_deform_attn_func.py").is_file():
        stub.core = official["models.ops.functions.ms_deform_attn_func"].ms_deform_attn_core_pytorch
    engine = official["engine"]
    if hasattr(engine, "data_prefetcher"):
        prefetcher = engine.data_prefetcher

        def cpu_safe_prefetcher(loader, device, prefetch=True):  # type: ignore[no-untyped-def]
            return prefetcher(loader, device, prefetch=prefetch and torch.device(device).type == "cuda")

        engine.data_prefetcher = cpu_safe_prefetcher
    return official


_TEMP_DIRS: list[Path] = []


def cleanup() -> None:
    """Remove the temporary copies made by ``load_official``."""
    while _TEMP_DIRS:
        shutil.rmtree(_TEMP_DIRS.pop(), ignore_errors=True)


def official_args(official: CodeBase, flags: list[str]) -> argparse.Namespace:
    """The official ``main.get_args_parser()`` applied to ``flags``; a flag it does not know is
    an error naming it (the official parser would exit with its usage)."""
    parser = official.main_script().get_args_parser()
    args, unknown = parser.parse_known_args(flags)
    if unknown:
        raise ValueError(f"the official code ({official.root}) does not accept {unknown}")
    return args


def build_ours(model_name: str, flags: list[str], device: torch.device | str, num_classes: int = 91) -> tuple:
    """``(model, criterion, postprocessors, args)`` of this project from main.py flags (no
    ImageNet download: weights are random or copied in), on ``device``."""
    config = ours()["util.config"]
    argv = ["--model", model_name, "--backbone_weights", "none", "--num_classes", str(num_classes)]
    args = config.resolve(config.get_args_parser().parse_args([*argv, *flags, "--device", str(device)]))
    model, criterion, postprocessors = ours()["models"].build_model(args)
    return model.to(device), criterion.to(device), postprocessors, args


def build_official(official: CodeBase, model_name: str, flags: list[str], device: torch.device | str) -> tuple:
    """``(model, criterion, postprocessors, args)`` of the official code with the same flags.
    COCO's 91 classes, as the official ``build`` sets for ``--dataset_file coco``. ``model``,
    ``num_classes`` and ``backbone_weights`` are also set on the namespace (the official code
    ignores them; stand-ins of the official layout read them)."""
    if model_name not in official.kinds:
        raise ValueError(f"--model {model_name}: {official.root} is the official {' / '.join(sorted(official.kinds))}")
    args = official_args(official, [*flags, "--device", str(device)])
    args.model, args.num_classes, args.backbone_weights = model_name, 91, "none"
    with official.active():
        try:
            model, criterion, postprocessors = official["models"].build_model(args)
        except Exception as e:  # the official code's asserts: say which flags it refused
            raise ValueError(f"the official code cannot build this model ({' '.join(flags)}): {e!r}") from e
    return model.to(device), criterion.to(device), postprocessors, args


def copy_weights(src: torch.nn.Module, dst: torch.nn.Module, what: str = "model") -> None:
    """Load ``src``'s state dict into ``dst`` with ``strict=True`` (official and ours have the
    same keys and shapes); a mismatch is an error listing the keys."""
    result = dst.load_state_dict(src.state_dict(), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(
            f"{what}: the two code bases' state dicts differ: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )


def call_in(codebase: CodeBase, fn: Callable[..., object], *args: object, **kwargs: object) -> object:
    """``fn(*args, **kwargs)`` with ``codebase`` active."""
    with codebase.active():
        return fn(*args, **kwargs)
