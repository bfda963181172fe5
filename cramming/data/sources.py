"""Read raw documents (plain strings) from the corpus a :class:`DataConfig` describes.

Sources:

* ``wikiextractor``: WikiExtractor output (``<doc id=.. url=.. title=..>`` ... ``</doc>``
  blocks); the title line is dropped.
* ``text``: plain text files; documents are separated by one or more empty lines.
* ``jsonl``: one JSON object per line, text in ``cfg.text_field``.
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
    if cfg.source in LOCAL_SOURCES or cfg.source == "binary":  # binary: cramming.data.binary
        return resolve_paths(cfg.paths)
    if cfg.source == "hf":  # only local matches; other entries are patterns inside the hub repo
        matches = (Path(m) for pattern in cfg.hf_data_files
                   for m in glob.glob(str(Path(pattern).expanduser()), recursive=True))
        return sorted({p.resolve() for m in matches for p in _files_under(m)})
    return []


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
    """``text_field`` of every JSON object in a JSON-lines file."""
    for number, line in enumerate(_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {number}: invalid JSON ({error.msg}).") from None
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
    try:
        dataset = datasets.load_dataset(cfg.hf_name, cfg.hf_config, split=cfg.hf_split,
                                        streaming=cfg.streaming, data_files=data_files)
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
    for path in source_files(cfg):
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
