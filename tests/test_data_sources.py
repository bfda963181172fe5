"""Document readers on real WikiExtractor files and on JSONL / text / hf-json copies of them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from cramming.config.schema import DataConfig
from cramming.data import iter_documents
from cramming.errors import DataError

DOC_BLOCK = re.compile(r'<doc id="\d+"[^\n]*>\n(.*?)\n</doc>', re.S)


def reference_documents(path: Path, min_chars: int = 32) -> list[str]:
    """Independent parse: body after the title line, stripped, stubs dropped."""
    bodies = (m.group(1).split("\n", 1)[1] if "\n" in m.group(1) else ""
              for m in DOC_BLOCK.finditer(path.read_text(encoding="utf-8")))
    return [b.strip() for b in bodies if len(b.strip()) >= min_chars]


def test_wikiextractor_parses_docs_and_skips_stubs(enwiki_files):
    path = enwiki_files[0]
    docs = list(iter_documents(DataConfig(paths=[str(path)])))
    total_blocks = path.read_text(encoding="utf-8").count("<doc ")
    assert docs == reference_documents(path)
    assert 100 < len(docs) < total_blocks  # the file has many title-only stubs
    assert all(len(d) >= 32 and "<doc" not in d and "</doc>" not in d for d in docs)
    assert docs[0].startswith("Jarred Shaw (born")  # title line "Jarred Shaw" was dropped


def test_wikiextractor_folders_globs_and_cap(enwiki_files, tmp_path):
    for sub, src in zip(["AA", "AB"], enwiki_files):
        (tmp_path / sub).mkdir()
        shutil.copy(src, tmp_path / sub / "wiki_00")
    expected = reference_documents(enwiki_files[0]) + reference_documents(enwiki_files[1])
    assert list(iter_documents(DataConfig(paths=[str(tmp_path)]))) == expected
    assert list(iter_documents(DataConfig(paths=[f"{tmp_path}/*/wiki_*"]))) == expected
    capped = list(iter_documents(DataConfig(paths=[str(tmp_path)], max_documents=7)))
    assert capped == expected[:7]


def test_relative_paths_resolve_against_cwd(enwiki_files, monkeypatch):
    monkeypatch.chdir(enwiki_files[0].parent)
    docs = list(iter_documents(DataConfig(paths=[enwiki_files[0].name], max_documents=3)))
    assert docs == reference_documents(enwiki_files[0])[:3]


def test_text_source_splits_on_blank_lines(enwiki_files, tmp_path):
    docs = reference_documents(enwiki_files[0])[:20]
    flat = [" ".join(d.split()) for d in docs]  # no blank lines inside a document
    (tmp_path / "corpus.txt").write_text("\n\n\n".join(flat) + "\n")
    cfg = DataConfig(source="text", paths=[str(tmp_path / "corpus.txt")])
    assert list(iter_documents(cfg)) == flat


@pytest.fixture
def jsonl_corpus(enwiki_files, tmp_path) -> tuple[Path, list[str]]:
    docs = reference_documents(enwiki_files[0])[:30]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "content": d}) + "\n" for i, d in enumerate(docs)))
    return path, docs


def test_jsonl_source(jsonl_corpus):
    path, docs = jsonl_corpus
    cfg = DataConfig(source="jsonl", paths=[str(path)], text_field="content")
    assert list(iter_documents(cfg)) == docs


def test_jsonl_missing_field_names_file_and_line(jsonl_corpus):
    path, _ = jsonl_corpus
    lines = path.read_text().splitlines()
    lines[2] = json.dumps({"id": 2, "body": "x" * 100})
    path.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(source="jsonl", paths=[str(path)], text_field="content")
    with pytest.raises(DataError, match=r"corpus\.jsonl, line 3: no field 'content'"):
        list(iter_documents(cfg))


@pytest.mark.parametrize("streaming", [True, False])
def test_hf_source_with_local_json(jsonl_corpus, streaming, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    path, docs = jsonl_corpus
    cfg = DataConfig(source="hf", hf_name="json", hf_data_files=[str(path)], streaming=streaming,
                     text_field="content", max_documents=25)
    assert list(iter_documents(cfg)) == docs[:25]
    bad = DataConfig(source="hf", hf_name="json", hf_data_files=[str(path)], text_field="nope")
    with pytest.raises(DataError, match="no field 'nope'"):
        list(iter_documents(bad))


def test_no_paths_and_missing_path():
    with pytest.raises(DataError, match="data.paths"):
        list(iter_documents(DataConfig(paths=[])))
    with pytest.raises(DataError, match="no_such_corpus_dir"):
        list(iter_documents(DataConfig(paths=["no_such_corpus_dir/wiki_00"])))
    with pytest.raises(DataError, match="matches no files"):
        list(iter_documents(DataConfig(paths=["no_such_corpus_dir/*"])))


def test_stub_only_corpus_yields_no_documents(enwiki_files, tmp_path):
    text = enwiki_files[0].read_text(encoding="utf-8")
    stubs = [m.group(0) for m in DOC_BLOCK.finditer(text) if len(m.group(1).strip()) < 100]
    path = tmp_path / "stubs_only"
    path.write_text("\n".join(stubs[:50]) + "\n")
    with pytest.raises(DataError, match=r"stubs_only.*yielded no documents of at least 100"):
        list(iter_documents(DataConfig(paths=[str(path)], min_document_chars=100)))


def test_unreadable_file(enwiki_files, tmp_path):
    path = tmp_path / "wiki_00"
    shutil.copy(enwiki_files[0], path)
    path.chmod(0)
    try:
        path.read_bytes()
        pytest.skip("running with permissions that read any file (root)")
    except PermissionError:
        pass
    with pytest.raises(DataError, match="Cannot read corpus file .*wiki_00"):
        list(iter_documents(DataConfig(paths=[str(path)])))
