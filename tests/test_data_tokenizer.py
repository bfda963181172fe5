"""Tokenizer training, special tokens, normalisation, pair layout, save / load."""

from __future__ import annotations

import itertools

import pytest

from cramming.config.schema import DataConfig
from cramming.data import iter_documents, load_tokenizer, train_tokenizer
from cramming.errors import DataError

VOCAB = 1000


@pytest.fixture(scope="module")
def documents(enwiki_files) -> list[str]:
    return list(iter_documents(DataConfig(paths=[str(enwiki_files[0])])))


@pytest.fixture(scope="module")
def tokenizer(documents):
    return train_tokenizer(documents, DataConfig(vocab_size=VOCAB))


def squash(text: str) -> str:
    return "".join(text.split())


def test_special_tokens_and_vocab_size(tokenizer):
    assert len(tokenizer) == VOCAB
    expected = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[MASK]": 4}
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in expected} == expected
    assert (tokenizer.pad_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id, tokenizer.unk_token_id) == (0, 2, 3, 4, 1)
    assert sorted(tokenizer.all_special_ids) == [0, 1, 2, 3, 4]


def test_round_trip_equals_normalised_text(tokenizer, documents):
    normalize = tokenizer.backend_tokenizer.normalizer.normalize_str
    sentence = "the history of the city and the river"
    assert tokenizer.decode(tokenizer.encode(sentence, add_special_tokens=False)) == sentence
    checked = 0
    for doc in documents[:200]:
        ids = tokenizer.encode(doc, add_special_tokens=False)
        if tokenizer.unk_token_id in ids:
            continue
        # decode() re-joins punctuation with spaces, so compare without whitespace
        assert squash(tokenizer.decode(ids)) == squash(normalize(doc))
        checked += 1
    assert checked > 50


def test_single_and_pair_layout(tokenizer):
    single = tokenizer("the city")
    tokens = tokenizer.convert_ids_to_tokens(single["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and tokens.count("[SEP]") == 1
    pair = tokenizer("the city", "a river flows")
    a = tokenizer.encode("the city", add_special_tokens=False)
    b = tokenizer.encode("a river flows", add_special_tokens=False)
    assert pair["input_ids"] == [2, *a, 3, *b, 3]
    assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


@pytest.mark.parametrize(("lowercase", "strip_accents", "expected"),
                         [(True, True, "cafe naive"), (False, False, "Café naïve")])
def test_normalisation_options(documents, lowercase, strip_accents, expected):
    cfg = DataConfig(vocab_size=300, lowercase=lowercase, strip_accents=strip_accents)
    tok = train_tokenizer(documents[:50], cfg)
    assert tok.backend_tokenizer.normalizer.normalize_str("Café naïve") == expected


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_other_models(documents, kind):
    tok = train_tokenizer(documents[:60], DataConfig(vocab_size=600, tokenizer=kind))
    assert [tok.convert_tokens_to_ids(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]] \
        == [0, 1, 2, 3, 4]
    text = "the history of the city"
    ids = tok.encode(text)
    assert ids[0] == 2 and ids[-1] == 3
    assert squash(tok.decode(ids, skip_special_tokens=True)) == squash(text)


def test_train_documents_cap(documents):
    consumed = itertools.count()
    stream = (doc for doc in documents if next(consumed) >= 0)
    train_tokenizer(stream, DataConfig(vocab_size=200, tokenizer_train_documents=5))
    assert next(consumed) <= 6  # islice may pull at most one extra


def test_save_and_load(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    text, other = "the river of the city", "born in 1990"
    assert loaded(text, other)["input_ids"] == tokenizer(text, other)["input_ids"]
    assert loaded.mask_token_id == 4 and len(loaded) == VOCAB


def test_unknown_tokenizer(tmp_path):
    with pytest.raises(DataError, match="no_such_tokenizer_dir"):
        load_tokenizer(tmp_path / "no_such_tokenizer_dir")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="empty_dir"):
        load_tokenizer(tmp_path / "empty_dir")
