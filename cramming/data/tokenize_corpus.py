"""Build a pre-tokenized binary corpus folder (see :mod:`cramming.data.binary`).

    python -m cramming.data.tokenize_corpus --source text --paths 'books/*.txt' \\
        --output corpora/books --vocab-size 16384
    python -m cramming.data.tokenize_corpus --source wikiextractor --paths enwiki/ \\
        --output corpora/enwiki --tokenizer outputs/run1/pretrain/<stamp>/model/tokenizer

Then pretrain on it with ``data.source=binary data.paths=[corpora/books]``.
Without ``--tokenizer`` a tokenizer (``--tokenizer-kind``, default WordPiece) is trained
on the corpus first.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from cramming.config.schema import DataConfig
from cramming.data.binary import write_binary_corpus
from cramming.data.packing import tokenize_documents
from cramming.data.sources import describe_corpus, iter_documents
from cramming.data.tokenizer import ReadAgain, load_tokenizer, train_tokenizer
from cramming.errors import CrammingError


def build(args: argparse.Namespace) -> dict:
    """Tokenize the described corpus into ``args.output``; returns its meta data."""
    cfg = DataConfig(name="binary", source=args.source, paths=list(args.paths),
                     text_field=args.text_field, max_documents=args.max_documents,
                     vocab_size=args.vocab_size, tokenizer=args.tokenizer_kind,
                     lowercase=not args.cased, strip_accents=not args.cased)
    if args.tokenizer:
        tokenizer = load_tokenizer(args.tokenizer)
    else:
        tokenizer = train_tokenizer(ReadAgain(  # two passes, nothing kept in memory
            lambda: itertools.islice(iter_documents(cfg), args.max_documents)), cfg)
    ids = tokenize_documents(iter_documents(cfg), tokenizer)
    return write_binary_corpus(args.output, ids, tokenizer, source=describe_corpus(cfg))


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry: parse ``argv`` and build the corpus folder."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("wikiextractor", "text", "jsonl"), default="text")
    parser.add_argument("--paths", nargs="+", required=True, help="files, folders or globs")
    parser.add_argument("--output", required=True, help="corpus folder to write")
    parser.add_argument("--tokenizer", help="save_pretrained folder (or hub name) to use")
    parser.add_argument("--tokenizer-kind", default="wordpiece",
                        choices=("wordpiece", "bpe", "unigram"))
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--cased", action="store_true", help="keep case and accents")
    parser.add_argument("--text-field", default="text", help="JSON field for --source jsonl")
    parser.add_argument("--max-documents", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        meta = build(args)
    except CrammingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"{args.output}: {meta['documents']} documents, {meta['tokens']} tokens "
          f"({meta['dtype']})")
    return meta


if __name__ == "__main__":
    main()
