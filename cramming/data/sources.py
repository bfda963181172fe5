"""Read raw documents (plain strings) from the corpus a :class:`DataConfig` describes.

Sources:

* ``wikiextractor``: WikiExtractor output (``<doc id=.. url=.. title=..>`` ... ``</doc>``
  blocks); the title line is dropped.
* ``text``: plain text files; documents are separated by one or more empty lines.
* ``jsonl``: one JSON object per line, text in ``cfg.text_field``, or one JSON string per line.
* ``hf``: ``datasets.load_dataset(cfg.hf_name, cfg.hf_config, ...)``, text in ``cfg.text_field``.

``cfg.paths`` entries are files, folders (read recursively) or glob patterns; relative
paths are resolved against the current working directory. Documents shorter than
``cfg.min_document_chars`` (after stripping) are skipped, ``cfg.max_documents`` caps the count.
"""

from __future__ import annotations

import glob
import itertools
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from cramming.config.schema import DataConfig
from cramming.errors import DataError

LOCAL_SOURCES = ("wikiextractor", "text", "jsonl")


def _files_under(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
        )
    return [path]


def resolve_paths(patterns: Iterable[str], what: str = "data.paths") -> list[Path]:
    """Expand files, folders (recursively) and globs into a sorted, de-duplicated file list."""
    patterns = list(patterns)
    if not patterns:
        raise DataError(f"No corpus files given: set {what} to files, folders or glob patterns.")
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if glob.has_magic(str(path)):
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
            if not matches:
                raise DataError(f"{what}: the pattern '{pattern}' matches no files "
                                f"(cwd: {Path.cwd()}).")
        elif path.exists():
            matches = [path]
        else:
            raise DataError(f"{what}: '{pattern}' does not exist (resolved to "
                            f"{path.resolve()}, cwd: {Path.cwd()}).")
        for match in matches:
            files.extend(f.resolve() for f in _files_under(match))
    files = sorted(dict.fromkeys(files))
    if not files:
        raise DataError(f"{what}: {patterns} contains no files.")
    return files


def source_files(cfg: DataConfig) -> list[Path]:
    """Local files the corpus is read from ([] for hub datasets)."""
    if cfg.source in (*LOCAL_SOURCES, "binary", "gpt-bert"):  # token files: binary, gpt_bert
        return resolve_paths(cfg.paths)
    if cfg.source == "hf":  # only local matches; other entries are patterns inside the hub repo
        matches = (Path(m) for pattern in cfg.hf_data_files
                   for m in glob.glob(str(Path(pattern).expanduser()), recursive=True))
        return sorted({p.resolve() for m in matches for p in _files_under(m)})
    return []


SNIFF_BYTES = 1 << 16  # how much of each corpus file is checked before reading it
# magic bytes -> (format, how to fix)
_COMPRESSED = (
    (b"\x1f\x8b", "gzip-compressed", "gunzip it first (gunzip -k FILE)"),
    (b"BZh", "bzip2-compressed", "decompress it first (bunzip2 -k FILE)"),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (unxz -k FILE)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (unzstd FILE)"),
    (b"PK\x03\x04", "a zip archive", "unzip it first and point data.paths at the files"),
    (b"PK\x05\x06", "an (empty) zip archive", "unzip it first"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive", "extract it first (7z x FILE)"),
    (b"\x04\x22\x4d\x18", "lz4-compressed", "decompress it first (lz4 -d FILE)"),
)
_UTF16_FIX = "convert it to UTF-8 first: iconv -f UTF-16 -t UTF-8 FILE > FILE.utf8"


def check_text_file(path: Path, what: str = "Corpus file") -> None:
    """Refuse a corpus file that is not UTF-8 text (compressed, binary, UTF-16/32, Latin-1...).

    Reads the first 64 KiB only; raises :class:`DataError` naming the file (``what``
    describes it) and the fix.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(SNIFF_BYTES)
    except OSError as error:
        raise DataError(f"Cannot read {what.lower()} {path}: {error.strerror or error}") from None
    for magic, kind, fix in _COMPRESSED:
        if head.startswith(magic):
            fix = fix.replace("FILE", str(path))
            raise DataError(f"{what} {path} is {kind}, not text: {fix}.")
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        raise DataError(f"{what} {path} is UTF-32 text: convert it to UTF-8 first: "
                        f"iconv -f UTF-32 -t UTF-8 {path} > {path}.utf8.")
    pairs = len(head) // 2
    nul_even, nul_odd = head[0::2].count(0), head[1::2].count(0)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (
            pairs >= 8 and max(nul_even, nul_odd) > 0.3 * pairs
            and min(nul_even, nul_odd) < 0.05 * pairs):
        fix = _UTF16_FIX.replace("FILE", str(path))
        raise DataError(f"{what} {path} is UTF-16 text: {fix}.")
    control = sum(head.count(byte) for byte in _CONTROL_BYTES)
    if head.count(0) or control > 0.05 * max(len(head), 1):
        raise DataError(f"{what} {path} is binary, not text ({head.count(0)} NUL and "
                        f"{control} control bytes in its first {len(head)} bytes): give "
                        f"data.paths text files (or data.source=binary for a folder written "
                        f"by cramming.data.tokenize_corpus).")
    text = head.decode("utf-8", errors="replace")
    if len(head) == SNIFF_BYTES:  # a character cut at the end of the sample is fine
        text = text.rstrip("\ufffd")
    invalid = text.count("\ufffd") - head.decode("utf-8", errors="ignore").count("\ufffd")
    if invalid > max(2, 0.001 * len(head)):
        raise DataError(f"{what} {path} is not UTF-8 ({invalid} invalid byte sequences "
                        f"in its first {len(head)} bytes): convert it first, e.g. iconv -f "
                        f"LATIN1 -t UTF-8 {path} > {path}.utf8 (use its real encoding).")


# bytes < 0x20 that text does not contain (tab, newlines, form feed and ESC are allowed)
_CONTROL_BYTES = [bytes([b]) for b in range(1, 32) if b not in (9, 10, 11, 12, 13, 27)]


def _open(path: Path):
    try:
        return open(path, encoding="utf-8", errors="replace")
    except OSError as error:
        raise DataError(f"Cannot read corpus file {path}: {error.strerror or error}") from None


def _lines(path: Path) -> Iterator[str]:
    with _open(path) as handle:
        try:
            yield from handle
        except OSError as error:
            raise DataError(f"Cannot read corpus file {path}: {error}") from None


def read_wikiextractor(path: Path) -> Iterator[str]:
    """Article texts of one WikiExtractor file, without the title line."""
    body: list[str] | None = None
    for line in _lines(path):
        if line.startswith("<doc ") or line.startswith("<doc>"):
            body = []
        elif line.startswith("</doc>"):
            if body is not None:
                yield "".join(body[1:])  # body[0] repeats the title
            body = None
        elif body is not None:
            body.append(line)


def read_text(path: Path) -> Iterator[str]:
    """Documents of a plain text file: blocks separated by one or more empty lines."""
    block: list[str] = []
    for line in _lines(path):
        if line.strip():
            block.append(line)
        elif block:
            yield "".join(block)
            block = []
    if block:
        yield "".join(block)


def read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    """``text_field`` of every JSON object in a JSON-lines file; a line that is a JSON
    string is the document itself (GPT-BERT's files)."""
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: invalid JSON ({error.msg}).") from None
        if isinstance(record, str):  # GPT-BERT's JSONL: each line is the text itself
            yield record
            continue
        if not isinstance(record, dict) or text_field not in record:
            keys = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}, line {number}: no field '{text_field}' (found: {keys}). "
                            f"Set data.text_field to the field holding the text.")
        yield str(record[text_field] or "")


def read_hf(cfg: DataConfig) -> Iterator[str]:
    """``cfg.text_field`` of every row of a ``datasets`` dataset (hub id or builder name)."""
    import datasets  # slow import: only when used

    if not cfg.hf_name:
        raise DataError("data.source=hf needs data.hf_name (e.g. 'allenai/c4').")
    data_files = list(cfg.hf_data_files) or None
    # Parquet shards of several corpora (e.g. data=bookcorpus-wikitext) differ in their other
    # columns; reading only the text column lets them form one dataset.
    columns = {"columns": [cfg.text_field]} if cfg.hf_name == "parquet" else {}
    try:
        dataset = datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=cfg.hf_split,
                                        streaming=cfg.streaming, data_files=data_files,
                                        **columns)
    except Exception as error:  # noqa: BLE001 - hub, network and format errors alike
        raise DataError(f"Cannot load dataset '{cfg.hf_name}' (config {cfg.hf_config}, split "
                        f"{cfg.hf_split}): {type(error).__name__}: {error}") from None
    for number, row in enumerate(dataset, start=1):
        if cfg.text_field not in row:
            raise DataError(f"Dataset '{cfg.hf_name}' row {number}: no field '{cfg.text_field}' "
                            f"(found: {', '.join(row)}). Set data.text_field.")
        yield str(row[cfg.text_field] or "")


def _raw_documents(cfg: DataConfig) -> Iterator[str]:
    if cfg.source == "hf":
        yield from read_hf(cfg)
        return
    if cfg.source not in LOCAL_SOURCES:
        raise DataError(f"Unknown data.source '{cfg.source}'.")
    files = source_files(cfg)
    for path in files:  # every file up front: a bad last file fails now, not in an hour
        check_text_file(path)
    for path in files:
        if cfg.source == "wikiextractor":
            yield from read_wikiextractor(path)
        elif cfg.source == "text":
            yield from read_text(path)
        else:
            yield from read_jsonl(path, cfg.text_field)


def describe_corpus(cfg: DataConfig) -> str:
    """Short human name of the corpus, for messages."""
    if cfg.source == "hf":
        return f"'{cfg.hf_name}' ({cfg.hf_config or 'default'}, {cfg.hf_split})"
    return f"'{cfg.name}' ({', '.join(cfg.paths) or 'no paths'})"


def iter_documents(cfg: DataConfig) -> Iterator[str]:
    """Stripped documents of at least ``cfg.min_document_chars`` characters, in corpus order.

    Raises :class:`DataError` if the corpus cannot be read or yields no documents at all.
    """
    documents = (doc.strip() for doc in _raw_documents(cfg))
    documents = (doc for doc in documents if len(doc) >= max(cfg.min_document_chars, 1))
    count = 0
    for document in itertools.islice(documents, cfg.max_documents):
        count += 1
        yield document
    if count == 0 and cfg.max_documents != 0:
        raise DataError(f"Corpus {describe_corpus(cfg)} yielded no documents of at least "
                        f"{cfg.min_document_chars} characters (source={cfg.source}). Check "
                        f"data.source, data.paths and data.min_document_chars.")
