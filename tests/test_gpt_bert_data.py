"""GPT-BERT's data files as they are: its tokenizer.json, its JSONL of JSON strings and its
torch-saved .bin of int16 tensors, written here the way its scripts write them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from cramming.config.schema import DataConfig
from cramming.data import iter_documents, load_tokenizer, prepare_data
from cramming.data.masking import IGNORE_INDEX
from cramming.errors import DataError
from cramming.objectives.span import SpanMasker

SPECIAL = ["<unk>", "<s>", "</s>", "<pad>", "<mask>", *[f"<special_{i}>" for i in range(11)]]


def gpt_bert_tokenizer(texts: list[str], vocab_size: int = 600) -> Tokenizer:
    """A BPE tokenizer built like tokenizer_creation/create_tokenizer.py builds it."""
    tokenizer = Tokenizer(BPE(unk_token="<unk>", byte_fallback=False, fuse_unk=False,
                              ignore_merges=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(" "), normalizers.NFKC()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+"),
                             behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


@pytest.fixture(scope="module")
def gpt_bert_files(enwiki_files, tmp_path_factory) -> dict[str, Path]:
    """tokenizer.json, a JSONL of JSON strings and its .bin, as GPT-BERT makes them."""
    folder = tmp_path_factory.mktemp("gpt-bert")
    texts = list(iter_documents(DataConfig(paths=[str(enwiki_files[0])], max_documents=40)))
    tokenizer = gpt_bert_tokenizer(texts)
    tokenizer.save(str(folder / "tokenizer.json"))
    with open(folder / "train.jsonl", "w") as handle:  # one JSON string per line
        for text in texts:
            handle.write(json.dumps(text) + "\n")
    documents = []  # corpus_tokenization/tokenize_corpus.py
    for line in open(folder / "train.jsonl"):
        ids = tokenizer.encode(json.loads(line).strip(), add_special_tokens=False).ids
        documents.append(torch.tensor(ids, dtype=torch.int16))
    torch.save(documents, folder / "train_tokenized.bin")
    return {"tokenizer": folder / "tokenizer.json", "jsonl": folder / "train.jsonl",
            "bin": folder / "train_tokenized.bin", "documents": documents}


def gpt_bert_config(files: dict, **changes) -> DataConfig:
    settings = dict(name="gpt-bert", source="gpt-bert", paths=[str(files["bin"])],
                    tokenizer="pretrained", pretrained_tokenizer=str(files["tokenizer"]),
                    seq_length=64, val_fraction=0.05, num_proc=1)
    return DataConfig(**{**settings, **changes})


def test_tokenizer_json_has_gpt_bert_roles_and_sixteen_special_ids(gpt_bert_files):
    tokenizer = load_tokenizer(gpt_bert_files["tokenizer"])
    assert (tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 1, 2, 3, 4)
    assert sorted(tokenizer.all_special_ids) == list(range(16))
    # masking never selects them, as GPT-BERT's n_special_tokens=16
    masker = SpanMasker.from_tokenizer(tokenizer, max_span=3)
    rows = torch.arange(64).remainder(len(tokenizer)).repeat(8, 1)
    _, labels = masker(rows, 0.5, torch.Generator().manual_seed(0))
    assert not (labels[rows < 16] != IGNORE_INDEX).any() and (labels != IGNORE_INDEX).any()


def test_bin_and_jsonl_give_the_same_rows_holding_the_documents(gpt_bert_files, tmp_path):
    from_bin = prepare_data(gpt_bert_config(gpt_bert_files), tmp_path, progress=False)
    from_jsonl = prepare_data(gpt_bert_config(gpt_bert_files, name="jsonl", source="jsonl",
                                              paths=[str(gpt_bert_files["jsonl"])]),
                              tmp_path, progress=False)
    assert from_bin.cache_dir != from_jsonl.cache_dir
    for split in ("train", "val"):
        assert np.array_equal(getattr(from_bin, split).input_ids,
                              getattr(from_jsonl, split).input_ids)
    assert from_bin.tokenizer.cls_token == "<s>" and from_bin.tokenizer.sep_token == "</s>"
    # rows in packing order, special tokens dropped: the documents' ids, back to back
    rows = np.concatenate([from_bin.train.input_ids, from_bin.val.input_ids])
    order = np.argsort(np.concatenate([from_bin.train.example_ids, from_bin.val.example_ids]))
    stream = rows[order].reshape(-1)
    stream = stream[stream >= 16]
    expected = torch.cat(gpt_bert_files["documents"]).long().numpy()
    assert len(stream) > 0.9 * len(expected)
    assert np.array_equal(stream, expected[:len(stream)])


class NotData:
    """Anything but tensors: weights_only loading must refuse to build it."""


@pytest.mark.parametrize("content, message", [
    (b"not a torch file", "not a GPT-BERT .bin"),
    ({"documents": []}, "not GPT-BERT's list"),
    ([torch.zeros(4)], "not a 1-d integer tensor"),
    ([torch.tensor([5, 70000])], "outside the tokenizer's"),
    (NotData(), "not a GPT-BERT .bin"),
])
def test_a_bad_bin_fails_in_one_line_and_leaves_no_cache(gpt_bert_files, tmp_path, content,
                                                        message):
    bad = tmp_path / "bad.bin"
    if isinstance(content, bytes):
        bad.write_bytes(content)
    else:
        torch.save(content, bad)
    # the good file first: the bad one must fail the whole build, not leave half of it
    cfg = gpt_bert_config(gpt_bert_files, paths=[str(gpt_bert_files["bin"]), str(bad)])
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=message) as error:
        prepare_data(cfg, cache, progress=False)
    assert "\n" not in str(error.value)
    assert list(cache.iterdir()) == []


def test_gpt_bert_source_needs_its_tokenizer(gpt_bert_files, tmp_path):
    with pytest.raises(DataError, match="data.tokenizer=pretrained"):
        prepare_data(gpt_bert_config(gpt_bert_files, tokenizer="bpe"), tmp_path, progress=False)
    bert_like = tmp_path / "plain.json"
    Tokenizer(BPE(unk_token="x")).save(str(bert_like))
    with pytest.raises(DataError, match="neither GPT-BERT's special tokens"):
        load_tokenizer(bert_like)
