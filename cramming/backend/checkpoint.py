"""Atomic checkpoints (training state) and model folders (what eval/validate load).

Layout of a run folder::

    <run_dir>/checkpoints/step-000120/{model.safetensors,state.pt}
    <run_dir>/checkpoints/LATEST          # name of the newest complete checkpoint
    <run_dir>/model/{model.safetensors,arch.json,tokenizer/,config.yaml}

Every write goes to a temporary sibling first, is fsynced and then renamed, so a crash
(even SIGKILL) mid-write leaves the previous checkpoint intact and readable.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cramming.config import to_typed
from cramming.config.schema import ArchConfig
from cramming.errors import CheckpointError

log = logging.getLogger(__name__)

MODEL_WEIGHTS = "model.safetensors"
TRAINING_STATE = "state.pt"
LATEST = "LATEST"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for file in path.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    for folder in [path, *[p for p in path.rglob("*") if p.is_dir()]]:
        _fsync_dir(folder)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def staging_folder(target: Path) -> Path:
    """A fresh hidden sibling of ``target`` to fill before :func:`atomic_folder` renames it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))


def atomic_folder(target: Path, fill: Callable[[Path], None],
                  staging: Path | None = None) -> Path:
    """Create folder ``target`` atomically: ``fill`` writes into a temp folder first.

    ``staging`` is a folder from :func:`staging_folder` that others (every rank of a
    sharded backend) have already written into; it is completed, then renamed.
    """
    tmp = staging if staging is not None else staging_folder(target)
    try:
        fill(tmp)
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _state_dict_for_saving(weights: torch.nn.Module | dict) -> dict[str, torch.Tensor]:
    """Weights with shared (tied) tensors stored once, contiguous, on the CPU."""
    seen: dict[int, str] = {}
    tensors = {}
    state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
    for key, value in state.items():
        if value.data_ptr() in seen:
            continue
        seen[value.data_ptr()] = key
        tensors[key] = value.detach().to("cpu").contiguous()
    return tensors


def read_weights(file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; CheckpointError if missing or unreadable."""
    if not file.is_file():
        raise CheckpointError(f"Missing weights file {file}.")
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"Corrupt or truncated weights file {file}: {error}") from None


def load_weights(model: torch.nn.Module, file: Path) -> None:
    """Load safetensors weights into ``model``; CheckpointError if unreadable or mismatched."""
    tensors = read_weights(file)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # Tied weights are saved once; the other name is filled through the shared tensor.
    tied = {name for name, param in model.named_parameters(remove_duplicate=False)} - set(tensors)
    missing = [key for key in missing if key not in tied]
    if missing or unexpected:
        raise CheckpointError(
            f"Weights in {file} do not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}. Was it written with a different arch config?"
        )


# --------------------------------------------------------------------------- training state


def new_checkpoint_staging(run_dir: Path) -> Path:
    """A staging folder for a checkpoint that several ranks write into before it is saved."""
    return staging_folder(Path(run_dir) / "checkpoints" / "step")


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module | dict,
                    state: dict[str, Any], keep: int = 2, staging: Path | None = None) -> Path:
    """Write ``checkpoints/step-N`` atomically, point LATEST at it, prune old ones.

    ``staging``: a :func:`new_checkpoint_staging` folder already holding backend shards.
    """
    root = Path(run_dir) / "checkpoints"
    target = root / f"step-{step:09d}"

    def fill(folder: Path) -> None:
        save_file(_state_dict_for_saving(model), str(folder / MODEL_WEIGHTS))
        torch.save(state, folder / TRAINING_STATE)

    atomic_folder(target, fill, staging)
    atomic_write_text(root / LATEST, target.name)
    complete = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in complete[: max(len(complete) - keep, 0)]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder of a run, or None."""
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    return folder if folder.is_dir() else None


def load_checkpoint(folder: Path, model: torch.nn.Module | None) -> dict[str, Any]:
    """Load weights into ``model`` (unless None) and return the saved training state."""
    if model is not None:
        load_weights(model, folder / MODEL_WEIGHTS)
    state_file = folder / TRAINING_STATE
    if not state_file.is_file():
        raise CheckpointError(f"Missing training state {state_file}.")
    try:
        return torch.load(state_file, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged pickle/zip
        raise CheckpointError(
            f"Corrupt or truncated training state {state_file}: {error}") from None


# --------------------------------------------------------------------------- model folders


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    arch: ArchConfig
    config: dict
    folder: Path


def save_model_folder(folder: Path, model: torch.nn.Module, tokenizer: Any,
                      resolved_config: dict | None = None) -> Path:
    """Write the final model folder (weights, arch, tokenizer, resolved config) atomically."""
    arch = model.arch

    def fill(tmp: Path) -> None:
        save_file(_state_dict_for_saving(model), str(tmp / MODEL_WEIGHTS))
        meta = {"arch": dataclasses.asdict(arch), "vocab_size": model.vocab_size,
                "pad_token_id": tokenizer.pad_token_id}
        (tmp / "arch.json").write_text(json.dumps(meta, indent=2))
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        if resolved_config is not None:
            import yaml

            (tmp / "config.yaml").write_text(yaml.safe_dump(resolved_config, sort_keys=False))

    return atomic_folder(Path(folder), fill)


def find_model_folder(base_dir: str | Path = "outputs", name: str | None = None,
                      path: str | Path | None = None) -> Path:
    """Explicit ``path`` (a model folder or a run folder), else the newest run of ``name``."""
    if path:
        candidate = Path(path).expanduser()
        for folder in (candidate, candidate / "model"):
            if (folder / "arch.json").is_file():
                return folder
        raise CheckpointError(f"No model folder at {candidate} (expected arch.json and "
                              f"{MODEL_WEIGHTS} there or in its model/ subfolder).")
    root = Path(base_dir).expanduser()
    pattern = f"{name}/pretrain/*/model/arch.json" if name else "*/pretrain/*/model/arch.json"
    found = sorted(root.glob(pattern), key=lambda p: (p.parent.parent.name, str(p)))
    if not found:
        what = f"run '{name}'" if name else "any run"
        raise CheckpointError(
            f"No finished pretraining model for {what} under {root.resolve()}. Pretrain first "
            f"(python pretrain_bert.py name=...) or pass an explicit model path.")
    return found[-1].parent


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model from a model folder; CheckpointError on anything missing or corrupt."""
    from cramming.architectures import build_model
    from cramming.data import load_tokenizer

    folder = Path(folder)
    meta_file = folder / "arch.json"
    if not meta_file.is_file():
        raise CheckpointError(f"Missing {meta_file}: not a cramming model folder.")
    try:
        meta = json.loads(meta_file.read_text())
        arch = to_typed(meta["arch"], ArchConfig)
        vocab_size = int(meta["vocab_size"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"Corrupt {meta_file}: {error}") from None
    tokenizer = load_tokenizer(str(folder / "tokenizer"))
    if len(tokenizer) > vocab_size:
        raise CheckpointError(
            f"Tokenizer in {folder / 'tokenizer'} has {len(tokenizer)} tokens but the model "
            f"only {vocab_size}: they do not belong together.")
    model = build_model(arch, vocab_size=vocab_size, pad_token_id=meta.get("pad_token_id") or 0)
    load_weights(model, folder / MODEL_WEIGHTS)
    config = {}
    if (folder / "config.yaml").is_file():
        import yaml

        config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    return LoadedModel(model=model.to(device).eval(), tokenizer=tokenizer, arch=arch,
                       config=config, folder=folder)
