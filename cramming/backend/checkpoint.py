"""Atomic checkpoints (training state) and model folders (what eval/validate load).

Layout of a run folder::

    <run_dir>/checkpoints/step-000120/{model.safetensors,state.pt,manifest.json}
    <run_dir>/checkpoints/LATEST          # name of the newest checkpoint (for people only)
    <run_dir>/model/{model.safetensors,arch.json,tokenizer/,config.yaml,manifest.json}

Every write goes to a temporary sibling first, is fsynced and then renamed, so a crash
(even SIGKILL) mid-write leaves the previous checkpoint intact and readable.

Loading runs no code from a file and uses nothing silently damaged: ``state.pt`` holds only
tensors and plain containers (read with ``torch.load(weights_only=True)``), and
``manifest.json`` lists the sha256 of every file of the folder, checked before use. Resume
scans ``checkpoints/step-*`` (LATEST is not trusted) and falls back past damaged ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cramming.config import to_typed
from cramming.config.schema import ArchConfig
from cramming.errors import CheckpointError

log = logging.getLogger(__name__)

MODEL_WEIGHTS = "model.safetensors"
TRAINING_STATE = "state.pt"
LATEST = "LATEST"
MANIFEST = "manifest.json"
HASH = "sha256"


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


def _one_line(error: BaseException | str, limit: int = 300) -> str:
    """The first line of an error message, shortened: messages here stay one line."""
    text = (str(error).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _digest(file: Path) -> str:
    with open(file, "rb") as handle:
        return hashlib.file_digest(handle, HASH).hexdigest()


def write_manifest(folder: Path) -> None:
    """``manifest.json``: size and sha256 of every other file under ``folder``."""
    files = {}
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = file.relative_to(folder).as_posix()
        if name != MANIFEST:
            files[name] = {"bytes": file.stat().st_size, HASH: _digest(file)}
    (folder / MANIFEST).write_text(json.dumps({"format": 1, "hash": HASH, "files": files},
                                              indent=1))


def verify_folder(folder: Path, required: Iterable[str] = (), need_manifest: bool = True
                  ) -> bool:
    """Check every file listed in ``folder``'s manifest (and that ``required`` are listed).

    CheckpointError naming the first damaged or missing file; without a manifest, a
    CheckpointError when ``need_manifest``, else False (a folder written before manifests).
    """
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        if need_manifest:
            raise CheckpointError(f"{folder} has no {MANIFEST} (not written completely by this "
                                  f"version of cramming): it cannot be verified.")
        return False
    try:
        manifest = json.loads(manifest_file.read_text())
        files = {str(name): (int(entry["bytes"]), str(entry[HASH]))
                 for name, entry in manifest["files"].items()}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError,
            ValueError, AttributeError) as error:
        raise CheckpointError(f"Corrupt {manifest_file}: {_one_line(error)}") from None
    missing = [name for name in required if name not in files]
    if missing:
        raise CheckpointError(f"{manifest_file} does not list {missing}: the folder is "
                              f"incomplete or was not written by cramming.")
    root = folder.resolve()
    for name, (size, digest) in sorted(files.items()):
        file = folder / name
        if root not in file.resolve().parents:
            raise CheckpointError(f"{manifest_file} names a file outside its folder: {name!r}.")
        if not file.is_file():
            raise CheckpointError(f"Missing {file} (listed in {manifest_file}).")
        if file.stat().st_size != size or _digest(file) != digest:
            raise CheckpointError(f"Checksum mismatch: {file} is damaged (its {HASH} differs "
                                  f"from the one in {MANIFEST} written with it).")
    return True


def staging_folder(target: Path) -> Path:
    """A fresh hidden sibling of ``target`` to fill before :func:`atomic_folder` renames it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))


def atomic_folder(target: Path, fill: Callable[[Path], None],
                  staging: Path | None = None) -> Path:
    """Create folder ``target`` atomically: ``fill`` writes into a temp folder first, then
    its :func:`write_manifest` is added, so a folder and its manifest appear together.

    ``staging`` is a folder from :func:`staging_folder` that others (every rank of a
    sharded backend) have already written into; it is completed, then renamed.
    """
    tmp = staging if staging is not None else staging_folder(target)
    try:
        fill(tmp)
        write_manifest(tmp)
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
        raise CheckpointError(f"Corrupt or truncated weights file {file}: "
                              f"{_one_line(error)}") from None


def _raise_on_shape_mismatch(model: torch.nn.Module, saved: dict[str, tuple[int, ...]],
                             file: Path) -> None:
    """CheckpointError naming the first tensor whose saved shape differs from the model's."""
    named = [*model.named_parameters(remove_duplicate=False),
             *model.named_buffers(remove_duplicate=False)]
    for name, value in named:
        # ZeRO-3 keeps an empty placeholder per parameter and its real shape in ds_shape
        shape = tuple(getattr(value, "ds_shape", None) or value.shape)
        if name in saved and tuple(saved[name]) != shape:
            raise CheckpointError(
                f"{file} does not fit this model: {name} has shape {list(saved[name])} there "
                f"but {list(shape)} here. Use the arch config it was written with (e.g. the "
                f"same arch.hidden_size), or start a new run.")


def check_weight_shapes(model: torch.nn.Module, file: Path) -> None:
    """Compare the tensor shapes in ``file``'s header with ``model``'s (reads no weights)."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            saved = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"Corrupt or truncated weights file {file}: "
                              f"{_one_line(error)}") from None
    _raise_on_shape_mismatch(model, saved, file)


def load_weights(model: torch.nn.Module, file: Path) -> None:
    """Load safetensors weights into ``model``; CheckpointError if unreadable or mismatched."""
    tensors = read_weights(file)
    _raise_on_shape_mismatch(model, {k: tuple(v.shape) for k, v in tensors.items()}, file)
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


PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size)


def check_plain(value: Any, where: str = "state") -> None:
    """TypeError naming the first value ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, PLAIN) or type(value) in (torch.Tensor, torch.nn.Parameter):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            check_plain(key, f"{where} key")
            check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple, set):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    raise TypeError(f"{where} is a {type(value).__qualname__}; checkpoints hold only tensors, "
                    f"numbers, strings and lists/tuples/dicts of them (convert it in its "
                    f"state_dict).")


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module | dict,
                    state: dict[str, Any], keep: int = 2, staging: Path | None = None,
                    protect: Iterable[Path] = ()) -> Path:
    """Write ``checkpoints/step-N`` atomically (with its manifest), point LATEST at it and
    prune older ones (see :func:`prune_checkpoints`; ``protect`` is never deleted).

    ``staging``: a :func:`new_checkpoint_staging` folder already holding backend shards.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the checkpoint just written is kept.")
    check_plain(state)
    root = Path(run_dir) / "checkpoints"
    target = root / f"step-{step:09d}"

    def fill(folder: Path) -> None:
        save_file(_state_dict_for_saving(model), str(folder / MODEL_WEIGHTS))
        torch.save(state, folder / TRAINING_STATE)

    atomic_folder(target, fill, staging)
    atomic_write_text(root / LATEST, target.name)
    prune_checkpoints(run_dir, keep, target, protect)
    return target


def _step_of(folder: Path) -> int | None:
    match = re.fullmatch(r"step-(\d+)", folder.name)
    return int(match.group(1)) if match else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The run's ``checkpoints/step-N`` folders, newest first (found by scanning: LATEST is
    only a hint for people, a lost or stale LATEST hides nothing)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None]
    return sorted(found, key=lambda p: _step_of(p), reverse=True)


def prune_checkpoints(run_dir: Path, keep: int, current: Path,
                      protect: Iterable[Path] = ()) -> None:
    """Delete checkpoints older than ``current`` beyond the newest ``keep`` up to it.

    ``current`` and ``protect`` (the checkpoint a run resumed from) always stay, and so do
    folders newer than ``current`` (left by a run that resumed past them as damaged).
    """
    step = _step_of(current)
    spared = {Path(p).resolve() for p in (current, *protect)}
    timeline = [p for p in list_checkpoints(run_dir) if _step_of(p) <= step]
    for old in timeline[keep:]:
        if old.resolve() not in spared:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint folder of a run (not verified), or None."""
    folders = list_checkpoints(run_dir)
    return folders[0] if folders else None


def _unpickling_detail(error: BaseException) -> str:
    match = re.search(r"WeightsUnpickler error: ([^\n]*)", str(error))
    text = match.group(1) if match else str(error)
    return _one_line(text.split(" was not an allowed global")[0], 160)


def read_state(folder: Path) -> dict[str, Any]:
    """The training state of checkpoint ``folder``, read with ``weights_only=True``."""
    state_file = folder / TRAINING_STATE
    if not state_file.is_file():
        raise CheckpointError(f"Missing training state {state_file}.")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"Refusing to load {state_file}: it holds more than tensors and plain values "
            f"({_unpickling_detail(error)}); it is crafted, damaged, or from a cramming version "
            f"before safe checkpoints. Nothing in it was run.") from None
    except Exception as error:  # torch raises many types for a damaged zip
        raise CheckpointError(f"Corrupt or truncated training state {state_file}: "
                              f"{_one_line(error)}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{state_file} holds a {type(state).__name__}, not a training "
                              f"state.")
    return state


def load_checkpoint(folder: Path, model: torch.nn.Module | None,
                    verify: bool = True) -> dict[str, Any]:
    """Verify ``folder`` against its manifest (unless ``verify`` is False), load weights into
    ``model`` (unless None) and return the saved training state."""
    if verify:
        verify_folder(folder, required=(MODEL_WEIGHTS, TRAINING_STATE))
    if model is not None:
        load_weights(model, folder / MODEL_WEIGHTS)
    return read_state(folder)


def newest_good_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint that verifies and its state; None when the run has none.

    Damaged newer ones are skipped with one warning line; CheckpointError (one line,
    nothing deleted) when every checkpoint folder is damaged.
    """
    folders = list_checkpoints(run_dir)
    problems = []
    for folder in folders:
        try:
            state = load_checkpoint(folder, None)
        except CheckpointError as error:
            problems.append(f"{folder.name}: {error}")
            continue
        if problems:
            log.warning("Skipped damaged checkpoint(s) [%s]; resuming from the newest good "
                        "one, %s.", "; ".join(problems), folder)
        return folder, state
    if problems:
        raise CheckpointError(
            f"No usable checkpoint in {Path(run_dir) / 'checkpoints'}, every one is damaged "
            f"[{'; '.join(problems)}]. Nothing was deleted; restore them from a backup, or "
            f"start over in a new run folder.")
    return None


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
    """Write the final model folder (weights, arch, tokenizer, config, manifest) atomically."""
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
    if not verify_folder(folder, required=(MODEL_WEIGHTS, "arch.json"), need_manifest=False):
        log.warning("%s has no %s (written before model folders had checksums): loading it "
                    "without verifying its files.", folder, MANIFEST)
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
