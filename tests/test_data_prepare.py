"""Packing, shuffling, splitting and caching on real Wikipedia text."""

from __future__ import annotations

import dataclasses
import os
import shutil

import numpy as np
import pytest
import torch

from cramming.config.schema import DataConfig
from cramming.data import iter_documents, load_prepared, prepare_data
from cramming.data.packing import token_dtype
from cramming.data.prepare import fingerprint
from cramming.errors import DataError

SEQ = 64


@pytest.fixture(scope="module")
def cfg(enwiki_files) -> DataConfig:
    return DataConfig(name="t", paths=[str(p) for p in enwiki_files], max_documents=600,
                      vocab_size=1000, seq_length=SEQ, val_fraction=0.05, shuffle_seed=3)


@pytest.fixture(scope="module")
def prepared(cfg, tmp_path_factory):
    return prepare_data(cfg, tmp_path_factory.mktemp("cache"), progress=False)


def all_rows(prepared) -> tuple[np.ndarray, np.ndarray]:
    """Rows of both splits, and their example ids."""
    ids = np.concatenate([prepared.train.example_ids, prepared.val.example_ids])
    rows = np.concatenate([prepared.train.input_ids, prepared.val.input_ids])
    return rows, ids


def test_rows_start_with_cls_and_have_exact_length(prepared):
    for split in (prepared.train, prepared.val):
        assert split.input_ids.dtype == np.uint16 and split.seq_length == SEQ
        assert split.input_ids.shape == (len(split), SEQ)
        assert (split.input_ids[:, 0] == prepared.tokenizer.cls_token_id).all()


def test_rows_are_the_sep_separated_documents_in_order(prepared, cfg):
    rows, ids = all_rows(prepared)
    content = rows[np.argsort(ids)][:, 1:].reshape(-1)
    tok = prepared.tokenizer
    expected = []
    for doc in iter_documents(cfg):
        expected += tok.encode(doc, add_special_tokens=False) + [tok.sep_token_id]
    assert len(expected) - len(content) < SEQ - 1  # only the last partial row is dropped
    np.testing.assert_array_equal(content, expected[:len(content)])


def test_split_sizes_and_disjoint_ids(prepared):
    _, ids = all_rows(prepared)
    total = len(ids)
    assert len(prepared.val) == round(0.05 * total)
    assert sorted(ids.tolist()) == list(range(total))  # disjoint and complete
    assert not (np.diff(prepared.train.example_ids) > 0).all()  # shuffled


def test_batch_returns_long_tensors(prepared):
    batch = prepared.train.batch(np.array([5, 0, 7]))
    assert batch["input_ids"].dtype == torch.int64 and batch["input_ids"].shape == (3, SEQ)
    np.testing.assert_array_equal(batch["input_ids"].numpy(), prepared.train.input_ids[[5, 0, 7]])
    assert batch["example_ids"].tolist() == prepared.train.example_ids[[5, 0, 7]].tolist()


def test_example_ids_identify_rows_across_seeds(prepared, cfg, tmp_path):
    other = prepare_data(dataclasses.replace(cfg, shuffle_seed=11), tmp_path, progress=False)
    assert other.fingerprint != prepared.fingerprint
    rows_a, ids_a = all_rows(prepared)
    rows_b, ids_b = all_rows(other)
    assert not np.array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(rows_a[np.argsort(ids_a)], rows_b[np.argsort(ids_b)])


def test_rebuild_in_new_cache_is_identical(prepared, cfg, tmp_path):
    again = prepare_data(cfg, tmp_path, progress=False)
    assert again.fingerprint == prepared.fingerprint
    assert again.cache_dir.name == prepared.cache_dir.name
    for split in ("train", "val"):
        a, b = getattr(prepared, split), getattr(again, split)
        np.testing.assert_array_equal(a.input_ids, b.input_ids)
        np.testing.assert_array_equal(a.example_ids, b.example_ids)


def test_cache_layout_and_load_prepared(prepared):
    names = {p.name for p in prepared.cache_dir.iterdir()}
    assert names == {"tokenizer", "meta.json", "train_input_ids.npy", "train_example_ids.npy",
                     "val_input_ids.npy", "val_example_ids.npy"}
    assert not [p for p in prepared.cache_dir.parent.iterdir() if p.name.startswith(".")]
    loaded = load_prepared(prepared.cache_dir)
    assert isinstance(loaded.train.input_ids, np.memmap)
    assert loaded.fingerprint == prepared.fingerprint
    np.testing.assert_array_equal(loaded.val.input_ids, prepared.val.input_ids)


def test_cache_reuse_does_not_read_the_corpus(enwiki_files, tmp_path):
    corpus = tmp_path / "wiki_00"
    shutil.copy(enwiki_files[0], corpus)
    stat = corpus.stat()
    cfg = DataConfig(name="reuse", paths=[str(corpus)], vocab_size=500, seq_length=32)
    first = prepare_data(cfg, tmp_path / "cache", progress=False)
    mtimes = {p.name: p.stat().st_mtime_ns for p in first.cache_dir.iterdir()}
    # same size and mtime but other bytes: a reused cache must not notice
    corpus.write_bytes(b"x" * stat.st_size)
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = prepare_data(dataclasses.replace(cfg, num_proc=1, tokenize_batch_size=7),
                          tmp_path / "cache", progress=False)
    assert second.cache_dir == first.cache_dir
    assert {p.name: p.stat().st_mtime_ns for p in second.cache_dir.iterdir()} == mtimes
    np.testing.assert_array_equal(second.train.input_ids, first.train.input_ids)
    # a new mtime changes the fingerprint: now the garbage corpus is read and rejected
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="wiki_00"):
        prepare_data(cfg, tmp_path / "cache", progress=False)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.cache_dir.name]


def test_fingerprint_covers_only_byte_changing_settings(cfg):
    base = fingerprint(cfg)
    for change in [dict(num_proc=1), dict(tokenize_batch_size=3), dict(name="other"),
                   dict(streaming=False)]:
        assert fingerprint(dataclasses.replace(cfg, **change)) == base, change
    for change in [dict(seq_length=128), dict(vocab_size=2000), dict(val_fraction=0.1),
                   dict(shuffle_seed=1), dict(lowercase=False), dict(max_documents=10),
                   dict(paths=cfg.paths[:1])]:
        assert fingerprint(dataclasses.replace(cfg, **change)) != base, change


def test_corpus_too_small(enwiki_files, tmp_path):
    cfg = DataConfig(name="small", paths=[str(enwiki_files[0])], max_documents=2,
                     vocab_size=300, seq_length=2048)
    with pytest.raises(DataError, match=r"wiki_00.*too small: it gave \d+ tokens.*at least 4094"):
        prepare_data(cfg, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # no half-built cache left behind


def test_missing_corpus(tmp_path):
    cfg = DataConfig(name="missing", paths=[str(tmp_path / "no_such_wiki")])
    with pytest.raises(DataError, match="no_such_wiki"):
        prepare_data(cfg, tmp_path / "cache", progress=False)


def test_token_dtype():
    assert token_dtype(32768) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.int32


def test_pretrained_tokenizer_gives_the_same_rows(prepared, cfg, tmp_path):
    prepared.tokenizer.save_pretrained(tmp_path / "tok")
    reuse = dataclasses.replace(cfg, tokenizer="pretrained",
                                pretrained_tokenizer=str(tmp_path / "tok"))
    again = prepare_data(reuse, tmp_path / "cache", progress=False)
    assert again.fingerprint != prepared.fingerprint
    np.testing.assert_array_equal(again.train.input_ids, prepared.train.input_ids)
    np.testing.assert_array_equal(again.val.example_ids, prepared.val.example_ids)
