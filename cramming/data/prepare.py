"""Build (or reuse) the tokenized, packed, shuffled and split pretraining corpus.

``prepare_data(cfg, cache_root)`` caches everything in ``<cache_root>/<name>-<fp[:12]>/``::

    tokenizer/                      save_pretrained folder
    train_input_ids.npy             [N_train, seq_length] uint16 (int32 for vocab > 65536)
    train_example_ids.npy           [N_train] int64, row index in the unshuffled packed order
    val_input_ids.npy, val_example_ids.npy
    meta.json                       settings, counts, source files

The fingerprint hashes only what changes these bytes, so a second call with the same
settings memory-maps the arrays without touching the corpus. The folder is built under a
temporary name and renamed into place, so an interrupted build never leaves a partial cache.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from cramming.config.schema import DataConfig
from cramming.data.packing import pack_documents, rows_needed, split_rows, write_split
from cramming.data.sources import describe_corpus, iter_documents, source_files
from cramming.data.tokenizer import ReadAgain, load_tokenizer, train_tokenizer
from cramming.errors import DataError

log = logging.getLogger("cramming.data")

FORMAT_VERSION = 1
SPLITS = ("train", "val")
# Settings that change the cached bytes; the rest (name, num_proc, batch sizes) do not.
FINGERPRINT_KEYS = (
    "source", "hf_name", "hf_config", "hf_split", "hf_data_files", "text_field", "max_documents",
    "min_document_chars", "tokenizer", "pretrained_tokenizer", "vocab_size", "lowercase",
    "strip_accents", "tokenizer_train_documents", "seq_length", "val_fraction", "shuffle_seed",
)


@dataclasses.dataclass
class PackedDataset:
    """Packed rows ``input_ids [N, L]`` (numpy, usually memory-mapped) and their example ids."""

    input_ids: np.ndarray
    example_ids: np.ndarray
    # digests of the cache it came from: "tokenizer" and "data" (see cramming.data.identity)
    digests: dict[str, str] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def seq_length(self) -> int:
        return int(self.input_ids.shape[1])

    def batch(self, indices: np.ndarray) -> dict[str, torch.Tensor]:
        """Rows at ``indices`` as ``input_ids`` (int64 [B, L]) and ``example_ids`` (int64 [B])."""
        indices = np.asarray(indices, dtype=np.int64)
        return {
            "input_ids": torch.from_numpy(np.asarray(self.input_ids[indices], dtype=np.int64)),
            "example_ids": torch.from_numpy(np.asarray(self.example_ids[indices], dtype=np.int64)),
        }

    @classmethod
    def load(cls, cache_dir: str | Path, split: str) -> PackedDataset:
        """Memory-map ``<split>_input_ids.npy`` and ``<split>_example_ids.npy`` of a cache."""
        cache_dir = Path(cache_dir)
        try:
            input_ids = np.load(cache_dir / f"{split}_input_ids.npy", mmap_mode="r")
            example_ids = np.load(cache_dir / f"{split}_example_ids.npy", mmap_mode="r")
        except (OSError, ValueError) as error:
            raise DataError(f"Cannot load the {split} split of the data cache {cache_dir}: "
                            f"{error}. Delete the folder to rebuild it.") from None
        if input_ids.ndim != 2 or len(input_ids) != len(example_ids):
            raise DataError(f"Data cache {cache_dir} is corrupt ({split}: input_ids "
                            f"{input_ids.shape}, example_ids {example_ids.shape}).")
        return cls(input_ids, example_ids)


@dataclasses.dataclass
class PreparedData:
    """Everything pretraining needs from the data side."""

    tokenizer: PreTrainedTokenizerFast
    train: PackedDataset
    val: PackedDataset
    cache_dir: Path
    fingerprint: str


def fingerprint_settings(cfg: DataConfig) -> dict[str, Any]:
    """The settings that determine the cache contents, including each source file's stat."""
    settings: dict[str, Any] = {key: getattr(cfg, key) for key in FINGERPRINT_KEYS}
    settings["hf_data_files"] = list(settings["hf_data_files"])
    settings["format_version"] = FORMAT_VERSION
    files = []
    for path in source_files(cfg):
        try:
            stat = path.stat()
        except OSError as error:
            raise DataError(f"Cannot read corpus file {path}: {error.strerror}") from None
        files.append([str(path), stat.st_size, stat.st_mtime_ns])
    settings["files"] = files
    if cfg.tokenizer == "pretrained" and cfg.pretrained_tokenizer:
        saved = Path(cfg.pretrained_tokenizer).expanduser()
        saved = saved if saved.is_file() else saved / "tokenizer.json"
        if saved.is_file():  # a local folder: its contents, not just its name, matter
            settings["pretrained_tokenizer_sha256"] = hashlib.sha256(saved.read_bytes()).hexdigest()
    return settings


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(cfg: DataConfig) -> str:
    """Hex digest of :func:`fingerprint_settings`: equal digests mean equal caches."""
    return _digest(fingerprint_settings(cfg))


def content_digest(cache_dir: Path) -> str:
    """sha256 of the packed arrays (train and validation rows and their example ids)."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for kind in ("input_ids", "example_ids"):
            with open(cache_dir / f"{split}_{kind}.npy", "rb") as handle:
                for block in iter(lambda: handle.read(1 << 22), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_prepared(cache_dir: str | Path) -> PreparedData:
    """Open a cache folder written by :func:`prepare_data` (arrays are memory-mapped)."""
    from cramming.data.identity import file_digest

    cache_dir = Path(cache_dir)
    meta_path = cache_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as error:
        raise DataError(f"{meta_path} is missing or unreadable ({error}): not a data cache "
                        "written by prepare_data.") from None
    train = PackedDataset.load(cache_dir, "train")
    val = PackedDataset.load(cache_dir, "val")
    tokenizer_json = cache_dir / "tokenizer" / "tokenizer.json"
    digests = {"tokenizer": file_digest(tokenizer_json) if tokenizer_json.is_file() else "?",
               "data": meta.get("content_sha256") or content_digest(cache_dir)}  # old caches
    train.digests, val.digests = digests, digests
    return PreparedData(
        tokenizer=load_tokenizer(cache_dir / "tokenizer"),
        train=train,
        val=val,
        cache_dir=cache_dir,
        fingerprint=meta["fingerprint"],
    )


def _get_tokenizer(cfg: DataConfig, progress: bool) -> PreTrainedTokenizerFast:
    if cfg.source == "binary":  # the ids were made with the corpus folder's own tokenizer
        from cramming.data.binary import binary_tokenizer

        return binary_tokenizer(cfg.paths)
    if cfg.source == "gpt-bert" and cfg.tokenizer != "pretrained":
        raise DataError("data.source=gpt-bert reads token ids: set data.tokenizer=pretrained "
                        "and data.pretrained_tokenizer to the tokenizer.json that made them.")
    if cfg.tokenizer == "pretrained":
        if not cfg.pretrained_tokenizer:
            raise DataError("data.tokenizer=pretrained needs data.pretrained_tokenizer "
                            "(a save_pretrained folder or hub name).")
        return load_tokenizer(cfg.pretrained_tokenizer)
    def documents():  # read twice (WordPiece / BPE), see cramming.data.tokenizer
        return tqdm(itertools.islice(iter_documents(cfg), cfg.tokenizer_train_documents),
                    desc="reading for the tokenizer", unit=" docs",
                    total=cfg.tokenizer_train_documents, disable=not progress)

    log.info("Training a %s tokenizer with %d entries on %s", cfg.tokenizer, cfg.vocab_size,
             describe_corpus(cfg))
    return train_tokenizer(ReadAgain(documents), cfg)


def _build(cfg: DataConfig, settings: dict[str, Any], digest: str, out: Path,
           progress: bool, tokenizer: PreTrainedTokenizerFast | None = None) -> None:
    started = time.perf_counter()
    tokenizer = tokenizer if tokenizer is not None else _get_tokenizer(cfg, progress)
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise DataError("The tokenizer needs [CLS] and [SEP] tokens for packing.")
    tokenizer.save_pretrained(out / "tokenizer")
    if cfg.source == "binary":  # pre-tokenized corpus folders (cramming.data.binary)
        from cramming.data.binary import pack_binary_corpus

        rows, counts = pack_binary_corpus(cfg.paths, out, cfg.seq_length, tokenizer,
                                          cfg.max_documents)
    elif cfg.source == "gpt-bert":  # GPT-BERT's .bin files (cramming.data.gpt_bert)
        from cramming.data.binary import pack_token_documents
        from cramming.data.gpt_bert import read_documents

        documents = (ids for path in source_files(cfg)
                     for ids in read_documents(path, len(tokenizer)))
        rows, counts = pack_token_documents(documents, out, cfg.seq_length, tokenizer,
                                            cfg.max_documents)
    else:
        rows, counts = pack_documents(iter_documents(cfg), tokenizer, out, cfg.seq_length,
                                      cfg.tokenize_batch_size, progress=progress)
    needed = rows_needed(cfg.val_fraction)
    if counts["rows"] < needed:
        raise DataError(
            f"Corpus {describe_corpus(cfg)} is too small: it gave {counts['tokens']} tokens "
            f"({counts['documents']} documents), but {needed} rows of seq_length "
            f"{cfg.seq_length} need at least {needed * (cfg.seq_length - 1)} tokens "
            f"(one training{' and one validation' if needed > 1 else ''} row). Add text or "
            f"lower data.seq_length.")
    train_ids, val_ids = split_rows(counts["rows"], cfg.val_fraction, cfg.shuffle_seed)
    for split, ids in zip(SPLITS, (train_ids, val_ids)):
        write_split(out / split, rows, ids)
    del rows
    (out / "packed.bin").unlink()
    meta = {
        "fingerprint": digest,
        "content_sha256": content_digest(out),
        "name": cfg.name,
        "settings": settings,
        "counts": {**counts, "train_rows": len(train_ids), "val_rows": len(val_ids)},
        "vocab_size": len(tokenizer),
        "dtype": str(np.load(out / "train_input_ids.npy", mmap_mode="r").dtype),
        "build_seconds": round(time.perf_counter() - started, 2),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


def prepare_data(cfg: DataConfig, cache_root: str | Path, progress: bool = True,
                 tokenizer: PreTrainedTokenizerFast | None = None) -> PreparedData:
    """Tokenizer plus packed train / validation rows for ``cfg``, from cache when possible.

    With ``tokenizer`` given (e.g. a pretrained model's), the corpus is tokenized with it
    instead of training or loading the one ``cfg`` names.
    """
    settings = fingerprint_settings(cfg)
    if tokenizer is not None:
        vocab = tokenizer.backend_tokenizer.to_str()
        settings["given_tokenizer_sha256"] = hashlib.sha256(vocab.encode()).hexdigest()
    digest = _digest(settings)
    cache_root = Path(cache_root).expanduser().resolve()
    cache_dir = cache_root / f"{cfg.name}-{digest[:12]}"
    if (cache_dir / "meta.json").is_file():
        log.info("Using cached data in %s", cache_dir)
        return load_prepared(cache_dir)
    try:
        return _prepare_into(cfg, settings, digest, cache_root, cache_dir, progress, tokenizer)
    except OSError as error:
        if error.errno not in _DISK_ERRNOS:
            raise
        raise DataError(f"Cannot write the data cache in {cache_root}: {error.strerror} "
                        f"({error.filename or cache_root}). Free space there or set base_dir "
                        f"to a writable folder with room.") from None


_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM,
                errno.ENOTDIR)


def _prepare_into(cfg: DataConfig, settings: dict[str, Any], digest: str, cache_root: Path,
                  cache_dir: Path, progress: bool,
                  tokenizer: PreTrainedTokenizerFast | None) -> PreparedData:
    """Build the cache folder ``cache_dir`` (atomically) and open it."""
    cache_root.mkdir(parents=True, exist_ok=True)
    if cfg.num_proc > 0:  # read when the tokenizers thread pool first starts
        os.environ.setdefault("RAYON_NUM_THREADS", str(cfg.num_proc))
    log.info("Preparing data %s into %s", describe_corpus(cfg), cache_dir)
    work = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-tmp-", dir=cache_root))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp makes it private; the cache is shared like any folder
    try:
        _build(cfg, settings, digest, work, progress, tokenizer)
        try:
            os.replace(work, cache_dir)
        except OSError:
            if not (cache_dir / "meta.json").is_file():  # not a concurrent build that won
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    prepared = load_prepared(cache_dir)
    log.info("Data cache ready in %s: %d training and %d validation rows of %d tokens",
             cache_dir, len(prepared.train), len(prepared.val), cfg.seq_length)
    return prepared
