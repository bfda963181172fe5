"""What a run's data stream depends on, recorded in checkpoints and checked on resume.

A resumed run must read the rows, in the order and with the masks, that the interrupted
run would have read. That depends on the corpus, the tokenizer (its exact ids), the packed
cache, the sequence length, the split and the seeds. :func:`data_identity` lists them; the
trainer stores the list in every checkpoint and :func:`check_resume_data` refuses to resume
when one differs (unless ``resume_allow_data_change=true``).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from cramming.config.schema import PretrainConfig
from cramming.errors import DataError

log = logging.getLogger(__name__)

OVERRIDE_KEY = "resume_allow_data_change"
UNKNOWN = "?"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_sources(cfg: PretrainConfig) -> str:
    """The configured corpus in one short string (source and paths, or the hub dataset)."""
    data = cfg.data
    if data.source == "hf":
        return f"hf:{data.hf_name}/{data.hf_config or 'default'}[{data.hf_split}]"
    return f"{data.source}:{','.join(str(p) for p in data.paths)}"


def data_identity(cfg: PretrainConfig, digests: dict[str, str], seq_length: int
                  ) -> dict[str, str]:
    """Everything that shapes the training data stream, as strings (see the module doc).

    ``digests`` holds the data cache's ``tokenizer`` and packed ``data`` sha256.
    """
    data = cfg.data
    return {
        "corpus": describe_sources(cfg),
        "tokenizer": digests.get("tokenizer", UNKNOWN),
        "data": digests.get("data", UNKNOWN),
        "seq_length": str(seq_length),
        "val_fraction": str(data.val_fraction),
        "shuffle_seed": str(data.shuffle_seed),
        "seed": str(cfg.seed),
    }


def _short(value: str) -> str:
    is_digest = len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    return value[:12] if is_digest else value


def data_changes(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """``"key old -> new"`` for every recorded setting that differs (unknowns skipped)."""
    changes = []
    for key, value in current.items():
        old = saved.get(key)
        if old is None or UNKNOWN in (old, value) or old == value:
            continue
        changes.append(f"{key} {_short(old)} -> {_short(value)}")
    return changes


def check_resume_data(saved: dict[str, str] | None, current: dict[str, str],
                      allow_change: bool) -> None:
    """Refuse (DataError, one line) to resume on data other than the checkpoint's."""
    if saved is None:
        log.warning("The checkpoint records no data identity (written by an older version): "
                    "cannot check that the data is unchanged.")
        return
    changes = data_changes(saved, current)
    if not changes:
        return
    listed = ", ".join(changes)
    if allow_change:
        log.warning("Data changed since the checkpoint: %s; continuing anyway (%s=true): the "
                    "data stream differs from the interrupted run's.", listed, OVERRIDE_KEY)
        return
    raise DataError(f"Data changed since the checkpoint: {listed}. Resume with the data "
                    f"settings the run was started with, or set {OVERRIDE_KEY}=true to "
                    f"continue on the new data anyway.")
