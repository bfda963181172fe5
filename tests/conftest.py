"""Shared fixtures: the real data in ``../shared/data`` and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _shared_dir(variable: str, name: str, marker: str) -> Path | None:
    """``$<variable>`` or ``<repo>/../shared/<name>``, whichever holds ``marker``."""
    for candidate in (os.environ.get(variable), REPO_ROOT.parent / "shared" / name):
        if candidate and (Path(candidate) / marker).is_file():
            return Path(candidate)
    return None


def shared_data_dir() -> Path | None:
    """``$CRAMMING_SHARED_DATA`` or ``<repo>/../shared/data`` (see its MANIFEST.md)."""
    return _shared_dir("CRAMMING_SHARED_DATA", "data", "MANIFEST.md")


def shared_reference_dir() -> Path | None:
    """``$CRAMMING_SHARED_REFERENCE`` or ``<repo>/../shared/reference`` (see its README.md)."""
    return _shared_dir("CRAMMING_SHARED_REFERENCE", "reference", "README.md")




def _missing(message: str) -> None:
    """Skip locally; under CI (``CI`` set) missing data is a failure, never a silent skip."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"{message} (CI is set: missing data is a failure)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder; missing, its tests skip locally and fail under CI."""
    path = shared_data_dir()
    if path is None:
        _missing("shared data not found: set CRAMMING_SHARED_DATA to its folder (MANIFEST.md) "
                 "or place it at <repo>/../shared/data")
    return path


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """The originals' reference fixtures (weights, inputs, outputs, LR curves, masking stats)."""
    path = shared_reference_dir()
    if path is None:
        _missing("reference fixtures not found: set CRAMMING_SHARED_REFERENCE to their folder "
                 "(README.md) or place them at <repo>/../shared/reference")
    return path


@pytest.fixture(scope="session")
def enwiki_files(shared_data: Path) -> list[Path]:
    """A few real WikiExtractor files: enough text for tiny models, fast to tokenize."""
    return sorted((shared_data / "corpus" / "enwiki").glob("wiki_*"))[:2]


@pytest.fixture(scope="session")
def pretrain_base_dir(tmp_path_factory) -> Path:
    """One base_dir per test session, so the processed-data cache is built only once."""
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="session")
def tiny_overrides(enwiki_files: list[Path], pretrain_base_dir: Path) -> list[str]:
    """Command-line overrides for a tiny, fast pretraining run on real Wikipedia text."""
    return [
        "arch=bert-tiny",
        "data=wikiextractor",
        f"data.paths=[{enwiki_files[0]}]",
        "data.vocab_size=2000",
        "data.seq_length=64",
        "impl=cpu",
        "impl.microbatch_size=8",
        "impl.progress_bar=false",
        "train.batch_size=16",
        "train.batch_size_ramp=0",
        "train.log_every_steps=1",
        "budget_kind=steps",
        "budget=6",
        f"base_dir={pretrain_base_dir}",
    ]


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors on shared cores: one intra-op thread is many times faster."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
