"""Pre-tokenized binary corpora: the builder module and data.source=binary."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cramming.config import compose, load_pretrain_config
from cramming.data import prepare_data
from cramming.data.binary import BinaryCorpus
from cramming.data.tokenize_corpus import main as tokenize_corpus
from cramming.errors import DataError
from cramming.pretrain import data_cache_root


def test_binary_corpus_packs_exactly_like_the_text_pipeline(tiny_overrides, enwiki_files,
                                                            tmp_path):
    cfg = load_pretrain_config(compose("pretrain", tiny_overrides))
    prepared = prepare_data(cfg.data, data_cache_root(cfg), progress=False)
    tokenizer_dir = prepared.cache_dir / "tokenizer"
    folder = tmp_path / "corpus"
    meta = tokenize_corpus(["--source", "wikiextractor", "--paths", str(enwiki_files[0]),
                            "--output", str(folder), "--tokenizer", str(tokenizer_dir),
                            "--max-documents", "60"])
    corpus = BinaryCorpus(folder)
    assert len(corpus) == meta["documents"] == 60 and corpus.tokens.dtype == np.uint16
    # The same text pipeline with the same tokenizer gives the same packed rows.
    text_cfg = dataclasses.replace(cfg.data, max_documents=60, tokenizer="pretrained",
                                   pretrained_tokenizer=str(tokenizer_dir))
    binary_cfg = dataclasses.replace(cfg.data, source="binary", paths=[str(folder)])
    from_text = prepare_data(text_cfg, tmp_path / "cache", progress=False)
    from_binary = prepare_data(binary_cfg, tmp_path / "cache", progress=False)
    assert from_binary.cache_dir != from_text.cache_dir
    assert np.array_equal(from_binary.train.input_ids, from_text.train.input_ids)
    assert np.array_equal(from_binary.val.example_ids, from_text.val.example_ids)
    first = prepared.tokenizer.decode(corpus.document(0).tolist())
    assert len(first) > 32


def test_missing_corpus_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a binary corpus folder"):
        BinaryCorpus(tmp_path / "empty")
