"""Download NTNG's randomized C4 subset and make it a local corpus here.

    python -m ntng_assets.download_c4_subset [--dest outputs/ntng/c4-subset-random]
    python -m ntng_assets.download_c4_subset --convert-only outputs/data/c4-subset-random_<hash>

The archive (``c4-subset-random.tar.bz2`` of NTNG's Zenodo record 8279728; size and MD5
checked, resumable) holds NTNG's processed corpus: a ``datasets`` ``save_to_disk`` folder of
``input_ids`` rows (128 WordPiece tokens, documents ended by the separator token) with its
``tokenizer/``. It is converted into a binary corpus folder (``<dest>/binary``: the
separator-delimited pieces of each row as documents, NTNG's own tokenizer), used with

    python pretrain_bert.py data=c4-subset-random data.source=binary \\
        data.paths=[<dest>/binary]

``--convert-only`` converts a folder unpacked by NTNG's own instructions (``tar xvf
c4-subset-random.tar.bz2 -C outputs/data/``).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ntng_assets import zenodo
from ntng_assets.download import DownloadError, download, extract

ARCHIVE = "c4-subset-random.tar.bz2"


def find_ntng_corpus(folder: Path) -> Path:
    """The processed-corpus folder (``state.json`` + ``tokenizer/``) at or below ``folder``."""
    for candidate in [folder, *sorted(p.parent for p in folder.rglob("state.json"))]:
        if (candidate / "state.json").is_file() and (candidate / "tokenizer").is_dir():
            return candidate
    raise DownloadError(f"No NTNG processed corpus (state.json and tokenizer/) under {folder}.")


def _documents(rows: Iterator[list[int]], separator: int) -> Iterator[list[int]]:
    for row in rows:
        ids = np.asarray(row, dtype=np.int64)
        cuts = np.flatnonzero(ids == separator)
        for piece in np.split(ids, cuts):
            piece = piece[piece != separator]
            if len(piece):
                yield piece.tolist()


def convert_ntng_corpus(folder: str | Path, out: str | Path) -> dict:
    """NTNG's processed corpus folder -> a binary corpus folder (``data.source=binary``)."""
    import datasets

    from cramming.data.binary import write_binary_corpus
    from cramming.data.tokenizer import load_tokenizer

    folder = find_ntng_corpus(Path(folder))
    tokenizer = load_tokenizer(folder / "tokenizer")
    if tokenizer.sep_token_id is None:
        raise DownloadError(f"{folder}/tokenizer has no separator token.")
    rows = datasets.load_from_disk(str(folder))
    if "input_ids" not in rows.column_names:
        raise DownloadError(f"{folder} has no input_ids column (found {rows.column_names}).")
    documents = _documents((row["input_ids"] for row in rows), tokenizer.sep_token_id)
    return write_binary_corpus(out, documents, tokenizer, source=f"NTNG {folder.name}")


def main(argv: list[str] | None = None) -> Path:
    """Download (resumable, checked), unpack and convert; returns the binary corpus folder."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", default="outputs/ntng/c4-subset-random")
    parser.add_argument("--url", default=None, help="fetch this URL instead of Zenodo's file")
    parser.add_argument("--sha256", default=None, help="expected checksum of the archive")
    parser.add_argument("--zenodo", default=zenodo.ZENODO, help="Zenodo (or a mirror) base URL")
    parser.add_argument("--convert-only", default=None, metavar="FOLDER",
                        help="convert an already unpacked NTNG corpus folder")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    if args.convert_only:
        unpacked = Path(args.convert_only)
    else:
        if args.url:
            archive = download(args.url, dest / "download", args.sha256, name=ARCHIVE)
        else:
            archive = zenodo.fetch(ARCHIVE, dest / "download", args.zenodo)
        unpacked = extract(archive, dest / "extracted")
    meta = convert_ntng_corpus(unpacked, dest / "binary")
    print(f"{dest / 'binary'}: {meta['documents']} documents, {meta['tokens']} tokens")
    return dest / "binary"


if __name__ == "__main__":
    main()
