"""Import Cramming's own model code (JonasGeiping/cramming) from a user's checkout, in-process.

Nothing of the original is vendored: ``--peer-cramming PATH`` names a checkout (the folder
holding its ``cramming/`` package). Both projects' packages are called ``cramming`` and the
original's modules import each other absolutely (``from cramming...``) and relatively, so
the loader

1. takes this project's ``cramming`` / ``cramming.*`` entries out of ``sys.modules``,
2. puts PATH first on ``sys.path`` and a bare package object named ``cramming`` (its
   ``__path__`` pointing at ``PATH/cramming``) into ``sys.modules``, so the original's
   ``cramming/__init__.py`` (which pulls in its data pipeline: datasets, wandb, ...) is
   not executed,
3. imports ``cramming.utils`` (its real one when its requirements are installed, else a
   stand-in with the one function the model code uses, ``is_main_process``) and
   ``cramming.architectures``,
4. renames every module it imported to ``cramming_original.*`` (module ``__name__`` and
   the ``__module__`` of the classes and functions defined in it), and
5. restores this project's modules and ``sys.path``, whatever happened.

The model is built as Cramming builds it: ``construct_model(cfg.arch, vocab_size)`` with
the arch config loaded from its own ``cramming/config/arch/<name>.yaml``.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

PACKAGE, ALIAS = "cramming", "cramming_original"
MARKER = Path("cramming") / "architectures" / "construction.py"
_LOADED: dict[Path, types.ModuleType] = {}  # checkout root -> its architectures module


class OriginalNotFound(RuntimeError):
    """PATH is not a checkout of JonasGeiping/cramming."""


def checkout_root(path: str | Path) -> Path:
    """The folder holding Cramming's ``cramming/`` package (PATH itself or PATH/..)."""
    path = Path(path).expanduser().resolve()
    for candidate in (path, path.parent):
        if (candidate / MARKER).is_file():
            return candidate
    raise OriginalNotFound(f"--peer-cramming {path}: no JonasGeiping/cramming checkout there "
                           f"(expected {path / MARKER})")


def _ours_or_theirs() -> dict[str, types.ModuleType]:
    return {name: module for name, module in sys.modules.items()
            if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _rename(module: types.ModuleType, old: str, new: str) -> None:
    """Module ``old`` becomes ``new``: its name, package, and what it defines."""
    module.__name__ = new
    package = getattr(module, "__package__", None)
    if package and (package == PACKAGE or package.startswith(PACKAGE + ".")):
        module.__package__ = ALIAS + package[len(PACKAGE):]
    for value in list(vars(module).values()):
        if getattr(value, "__module__", None) == old:
            try:
                value.__module__ = new
            except (AttributeError, TypeError):  # builtins, frozen objects
                pass


def load_original(path: str | Path) -> types.ModuleType:
    """Cramming's ``cramming.architectures`` from the checkout at ``path``, imported as
    ``cramming_original.architectures`` (this project's ``cramming`` is left untouched)."""
    root = checkout_root(path)
    if root in _LOADED:
        return _LOADED[root]
    ours = _ours_or_theirs()
    for name in ours:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    theirs: dict[str, types.ModuleType] = {}
    try:
        package = types.ModuleType(PACKAGE, "JonasGeiping/cramming (package __init__ skipped)")
        package.__path__ = [str(root / PACKAGE)]
        package.__file__ = str(root / PACKAGE / "__init__.py")
        package.__package__ = PACKAGE
        sys.modules[PACKAGE] = package
        try:
            importlib.import_module(f"{PACKAGE}.utils")
        except Exception:  # its system utilities need pynvml, multiprocess, datasets, ...
            for name in list(sys.modules):
                if name.startswith(PACKAGE + "."):
                    del sys.modules[name]
            utils = types.ModuleType(f"{PACKAGE}.utils", "stand-in: is_main_process only")
            utils.is_main_process = lambda: True
            sys.modules[utils.__name__] = utils
            package.utils = utils
        try:
            importlib.import_module(f"{PACKAGE}.architectures")
        except ImportError as error:
            raise OriginalNotFound(f"--peer-cramming {root}: importing its model code failed: "
                                   f"{error}") from None
    finally:
        theirs = _ours_or_theirs()
        for name in theirs:
            del sys.modules[name]
        sys.modules.update(ours)
        sys.path.remove(str(root))
    for name, module in theirs.items():
        alias = ALIAS + name[len(PACKAGE):]
        _rename(module, name, alias)
        sys.modules[alias] = module
    _LOADED[root] = theirs[f"{PACKAGE}.architectures"]
    return _LOADED[root]


def arch_config(path: str | Path, *, layers: int, hidden: int, heads: int, intermed_size: int,
                seq: int, dropout: float, mask_prob: float, name: str = "crammed-bert") -> Any:
    """Cramming's arch config ``name`` from its checkout, resized; ``intermed_size`` counts
    both GLU branches (Cramming's convention). Its ``sparse_prediction`` interpolates
    ``train.objective.mlm_probability``: that is ``mask_prob`` here."""
    root = checkout_root(path)
    file = root / PACKAGE / "config" / "arch" / f"{name}.yaml"
    if not file.is_file():
        raise OriginalNotFound(f"--peer-cramming {root}: no arch config {file}")
    cfg = OmegaConf.create({"arch": OmegaConf.load(file),
                            "train": {"objective": {"mlm_probability": mask_prob}}})
    arch = cfg.arch
    arch.num_transformer_layers, arch.hidden_size, arch.intermed_size = layers, hidden, \
        intermed_size
    arch.attention.num_attention_heads = heads
    arch.embedding.max_seq_length = seq
    arch.hidden_dropout_prob = arch.embedding.dropout_prob = dropout
    arch.attention.dropout_prob = dropout
    return arch


def build_original_model(path: str | Path, vocab_size: int, **shape: Any) -> Any:
    """``cramming.construct_model(cfg_arch, vocab_size)`` of the checkout at ``path``;
    ``shape`` as for :func:`arch_config`. Its forward returns ``{"loss", "outputs"}``."""
    architectures = load_original(path)
    return architectures.construct_model(arch_config(path, **shape), vocab_size)
