"""Task readers on the real shared files; bad-input errors name the file / key."""

import re
from pathlib import Path

import pytest

from cramming.errors import ConfigError, DataError
from cramming.evaluation.readers import TaskUnavailable, read_split, task_folder
from cramming.evaluation.tasks import TASKS, get_task


def manifest_counts(shared: Path) -> dict[tuple[str, str], int]:
    """(folder, file) -> rows, parsed from MANIFEST.md's layout table."""
    counts = {}
    for line in (shared / "MANIFEST.md").read_text().splitlines():
        match = re.match(r"\| (glue|superglue)/(\S+) \| [^|]+ \| ([^|]+): ([\d / ]+) \|", line)
        if not match:
            continue
        suite, folder, files, numbers = match.groups()
        for name, number in zip(files.split(", "), numbers.split(" / ")):
            counts[(f"{suite}/{folder}", name.strip())] = int(number)
    return counts


def test_every_reader_matches_manifest_row_counts(shared_data):
    counts = manifest_counts(shared_data)
    assert len(counts) > 30
    checked = 0
    for task in TASKS.values():
        for split, spec in task.files.items():
            first = spec[0] if isinstance(spec, list) else spec  # alternatives: the first
            file_name = first[0] if isinstance(first, tuple) else first
            key = (f"{task.suite}/{task.folder}", file_name)
            if key not in counts:
                with pytest.raises(TaskUnavailable):
                    read_split(task, split, str(shared_data), "files")
                continue
            result = read_split(task, split, str(shared_data), "files")
            assert result.rows == counts[key], (task.name, split)
            assert result.examples, (task.name, split)
            has_labels = split not in ("test", "test_matched", "test_mismatched")
            assert result.labelled == has_labels, (task.name, split)
            checked += 1
    assert checked >= 35


def test_examples_keep_every_field(shared_data):
    copa = read_split(get_task("copa"), "validation", str(shared_data), "files").examples[0]
    assert copa["texts"] == ["The man turned on the faucet.", "effect"]
    assert copa["choices"] == ["The toilet filled with water.", "Water flowed from the spout."]
    assert copa["label"] == 1
    wic = read_split(get_task("wic"), "validation", str(shared_data), "files").examples[0]
    word, s1, s2 = wic["texts"]
    assert word == "class" and s1[25:30] == "class" and s2[85:90] == "class"
    multirc = read_split(get_task("multirc"), "validation", str(shared_data), "files").examples
    assert multirc[0]["group"] == multirc[1]["group"] == (0, 0)
    assert multirc[0]["texts"][1].startswith("Would the mass")
    assert {e["label"] for e in multirc} == {0, 1}
    for example in read_split(get_task("wsc"), "validation", str(shared_data), "files").examples:
        text = example["texts"][0]
        (_, a, b), (_, c, d) = example["spans"]
        assert text[a:b] and text[c:d]
    stsb = read_split(get_task("stsb"), "validation", str(shared_data), "files").examples[0]
    assert stsb["label"] == pytest.approx(5.0)


def test_missing_files_are_unavailable_not_errors(shared_data, tmp_path):
    with pytest.raises(TaskUnavailable, match="QQP"):
        read_split(get_task("qqp"), "train", str(shared_data), "files")
    assert task_folder(get_task("rte"), tmp_path) == tmp_path / "glue" / "RTE"


def test_wrong_columns_name_the_file(tmp_path):
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text("index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n")
    with pytest.raises(DataError, match=r"train\.tsv.*sentence1"):
        read_split(get_task("rte"), "train", str(tmp_path), "files")


def test_label_outside_label_set_names_file_and_line(tmp_path):
    folder = tmp_path / "superglue" / "CB"
    folder.mkdir(parents=True)
    good = '{"premise": "p", "hypothesis": "h", "label": "neutral", "idx": 0}\n'
    bad = '{"premise": "p", "hypothesis": "h", "label": "maybe", "idx": 1}\n'
    (folder / "train.jsonl").write_text(good + bad)
    with pytest.raises(DataError, match=r"train\.jsonl:2.*'maybe'.*entailment"):
        read_split(get_task("cb"), "train", str(tmp_path), "files")
    (folder / "val.jsonl").write_text('{"premise": "p", "label": "neutral", "idx": 0}\n')
    with pytest.raises(DataError, match=r"val\.jsonl:1: missing key 'hypothesis'"):
        read_split(get_task("cb"), "validation", str(tmp_path), "files")


def test_unknown_task_lists_allowed_names():
    with pytest.raises(ConfigError, match=r"Unknown task 'mnli2'.*cola.*wsc"):
        get_task("mnli2")
    assert get_task("SST-2").name == "sst2"
