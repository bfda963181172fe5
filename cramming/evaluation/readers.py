"""Read task splits from the official distribution files or the Hugging Face hub.

Every reader returns plain-dict examples in one normalised form:

  ``texts``   the text fields in encoding order (all of them are encoded)
  ``label``   class id (position in ``task.labels``), a float (STS-B), or None (test)
  ``idx``     the id the leaderboard submission uses
  plus per-kind extras: ``spans`` (field, char start, char end) for WiC / WSC,
  ``choices`` for COPA, ``group`` for MultiRC, ``entities`` / ``answers`` for ReCoRD,
  ``row`` (the record's position in the file; AX-g pairs rows 2k and 2k+1).

Absent files raise :class:`TaskUnavailable` (the task is skipped); malformed files raise
:class:`~cramming.errors.DataError` naming the file, line and key.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cramming.data.sources import check_text_file
from cramming.errors import DataError
from cramming.evaluation.tasks import Task, TsvLayout

log = logging.getLogger(__name__)
csv.field_size_limit(sys.maxsize)


class TaskUnavailable(Exception):
    """The split's data cannot be found: the task is reported as skipped with this reason."""


@dataclass
class Split:
    name: str
    examples: list[dict]
    rows: int  # lines / records read from the source (MultiRC: passages)
    source: str  # file path or hub id

    @property
    def labelled(self) -> bool:
        return bool(self.examples) and all(e.get("label") is not None for e in self.examples)


# --------------------------------------------------------------------------- labels


def _label_id(task: Task, value: Any, where: str) -> int | None:
    """Class id of a label as written in a file; DataError naming ``where`` if unknown."""
    if value is None or value == "":
        return None
    for index, allowed in enumerate(task.labels):
        if value == allowed or str(value).strip().lower() == str(allowed).lower():
            return index
    raise DataError(f"{where}: label {value!r} is not one of the labels of task '{task.name}': "
                    f"{', '.join(map(str, task.labels))}")


def _float_label(value: Any, where: str) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise DataError(f"{where}: score {value!r} is not a number.") from None


# --------------------------------------------------------------------------- GLUE TSV


def read_tsv(task: Task, path: Path, layout: TsvLayout) -> Split:
    """One GLUE TSV file. Quoting is off: GLUE text contains unbalanced quotes."""
    check_text_file(path, "Task file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            rows = [row for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
                    if row]
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None
    if layout.header:
        if not rows:
            raise DataError(f"{path} is empty: expected a header row.")
        header, rows = [c.strip() for c in rows[0]], rows[1:]
    else:
        header = [str(i) for i in range(max((len(r) for r in rows), default=0))]
    wanted = [*layout.text, *([layout.label] if layout.label else [])]
    missing = [c for c in wanted if c not in header]
    if missing:
        what = "columns (by position)" if not layout.header else "columns"
        raise DataError(f"{path}: missing {what} {missing}; found {header}. Expected the GLUE "
                        f"distribution layout with {wanted}.")
    position = {name: i for i, name in enumerate(header)}
    examples = []
    for line, row in enumerate(rows, start=2 if layout.header else 1):
        where = f"{path}:{line}"
        if len(row) < len(header):
            raise DataError(f"{where}: {len(row)} fields, the header has {len(header)}.")
        texts = [row[position[c]] for c in layout.text]
        raw = row[position[layout.label]] if layout.label else None
        label = (_float_label(raw, where) if task.kind == "regression"
                 else _label_id(task, raw, where))
        idx = row[position[layout.id]] if layout.id in position else len(examples)
        examples.append({"texts": texts, "label": label, "idx": idx})
    return Split(name="", examples=examples, rows=len(rows), source=str(path))


# --------------------------------------------------------------------------- SuperGLUE JSONL


def _get(record: dict, key: str, where: str) -> Any:
    value = record
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise DataError(f"{where}: missing key '{key}' (found keys {sorted(record)}).")
        value = value[part]
    return value


def _parse_boolq(task: Task, r: dict, where: str) -> list[dict]:
    return [{"texts": [_get(r, "question", where), _get(r, "passage", where)],
             "label": _label_id(task, r.get("label"), where), "idx": r.get("idx")}]


def _parse_nli(task: Task, r: dict, where: str) -> list[dict]:
    # CB / RTE / AX-g use premise+hypothesis, AX-b sentence1+sentence2.
    keys = ("premise", "hypothesis") if "premise" in r or "sentence1" not in r else (
        "sentence1", "sentence2")
    example = {"texts": [_get(r, k, where) for k in keys],
               "label": _label_id(task, r.get("label"), where), "idx": r.get("idx")}
    return [example]


def _parse_copa(task: Task, r: dict, where: str) -> list[dict]:
    return [{"texts": [_get(r, "premise", where), _get(r, "question", where)],
             "choices": [_get(r, "choice1", where), _get(r, "choice2", where)],
             "label": _label_id(task, r.get("label"), where), "idx": r.get("idx")}]


def _parse_wic(task: Task, r: dict, where: str) -> list[dict]:
    s1, s2 = _get(r, "sentence1", where), _get(r, "sentence2", where)
    spans = [(1, int(_get(r, "start1", where)), int(_get(r, "end1", where))),
             (2, int(_get(r, "start2", where)), int(_get(r, "end2", where)))]
    # The target word leads as its own field; its spans in both sentences are pooled.
    return [{"texts": [_get(r, "word", where), s1, s2], "spans": spans,
             "label": _label_id(task, r.get("label"), where), "idx": r.get("idx")}]


def _word_span(text: str, index: int, span_text: str) -> tuple[int, int]:
    """Character span of ``span_text`` given its whitespace-word ``index`` in ``text``.

    A few official WSC items carry an index that is off; then the occurrence of the
    span text nearest to that word is used.
    """
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    n_words = max(len(span_text.split()), 1)

    def span_at(i: int) -> tuple[int, int]:
        i = min(max(i, 0), len(starts) - 1)
        last = min(i + n_words - 1, len(starts) - 1)
        end = starts[last] + len(text[starts[last]:].split(maxsplit=1)[0])
        return starts[i], end

    start, end = span_at(index)
    if text[start:end].lower().strip(".,!?;:'\"") == span_text.lower().strip(".,!?;:'\""):
        return start, end
    found = [m.start() for m in re.finditer(re.escape(span_text), text, flags=re.IGNORECASE)]
    if not found:
        return start, end
    anchor = starts[min(max(index, 0), len(starts) - 1)]
    best = min(found, key=lambda s: abs(s - anchor))
    return best, best + len(span_text)


def _parse_wsc(task: Task, r: dict, where: str) -> list[dict]:
    text = _get(r, "text", where)
    target = r.get("target", r)  # files nest the spans in "target", the hub does not
    spans = [(0, *_word_span(text, int(_get(target, f"span{i}_index", where)),
                             str(_get(target, f"span{i}_text", where)))) for i in (1, 2)]
    return [{"texts": [text], "spans": spans, "label": _label_id(task, r.get("label"), where),
             "idx": r.get("idx")}]


def _parse_multirc(task: Task, r: dict, where: str) -> list[dict]:
    passage = _get(r, "passage.text", where)
    examples = []
    for question in _get(r, "passage.questions", where):
        for answer in _get(question, "answers", where):
            key = (r.get("idx"), question.get("idx"))
            examples.append({
                "texts": [passage, _get(question, "question", where), _get(answer, "text", where)],
                "label": _label_id(task, answer.get("label"), where),
                "idx": (r.get("idx"), question.get("idx"), answer.get("idx")), "group": key})
    return examples


def _clean_record_passage(text: str) -> str:
    return text.replace("@highlight\n", "- ")


def _parse_record(task: Task, r: dict, where: str) -> list[dict]:
    text = _get(r, "passage.text", where)
    entities = []
    for entity in _get(r, "passage.entities", where):
        name = text[int(entity["start"]):int(entity["end"]) + 1]  # end is inclusive
        if name not in entities:
            entities.append(name)
    examples = []
    for qa in _get(r, "qas", where):
        answers = [a["text"] for a in qa.get("answers", [])]
        examples.append({"passage": _clean_record_passage(text),
                         "query": _get(qa, "query", where), "entities": entities,
                         "answers": answers, "label": answers or None, "idx": qa.get("idx")})
    return examples


PARSERS: dict[str, Callable[[Task, dict, str], list[dict]]] = {
    "boolq": _parse_boolq, "nli": _parse_nli, "copa": _parse_copa, "wic": _parse_wic,
    "wsc": _parse_wsc, "multirc": _parse_multirc, "record": _parse_record,
}


def _parse_records(task: Task, records: Iterable[tuple[str, dict]]) -> tuple[list[dict], int]:
    parse = PARSERS[task.reader]
    examples, rows = [], 0
    for where, record in records:
        for example in parse(task, record, where):
            example["row"] = rows  # AX-g pairs rows (2k, 2k+1); kept through subsampling
            examples.append(example)
        rows += 1
    return examples, rows


def read_jsonl(task: Task, path: Path) -> Split:
    """One SuperGLUE JSONL file (one JSON object per line)."""

    def records():
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{line_number}: not valid JSON ({error}).") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{line_number}: expected a JSON object per line.")
                yield f"{path}:{line_number}", record

    check_text_file(path, "Task file")
    try:
        examples, rows = _parse_records(task, records())
    except UnicodeDecodeError as error:
        raise _not_utf8(path, error) from None
    return Split(name="", examples=examples, rows=rows, source=str(path))


def _not_utf8(path: Path, error: UnicodeDecodeError) -> DataError:
    return DataError(f"Task file {path} is not UTF-8 text (byte {error.object[error.start]:#04x} "
                     f"cannot be decoded): convert it, e.g. iconv -f LATIN1 -t UTF-8 {path}.")


# --------------------------------------------------------------------------- hub

_GLUE_HUB_FIELDS = {
    "cola": ("sentence",), "sst2": ("sentence",), "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"), "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"), "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
    "ax": ("premise", "hypothesis"),
}


def _hub_label(task: Task, value: Any) -> Any:
    """Hub labels are ClassLabel ids (-1 for test); turn them into file-style labels."""
    if value is None or (isinstance(value, int) and value < 0):
        return None
    if task.kind == "regression" or not task.labels or isinstance(value, str):
        return value
    return task.labels[int(value)]


def _hub_to_record(task: Task, row: dict) -> dict:
    """A hub row in the shape of the official SuperGLUE JSONL record."""
    row = dict(row)
    if "label" in row:
        row["label"] = _hub_label(task, row["label"])
    if task.reader == "multirc":  # hub rows are flat: one per answer
        idx = row["idx"]
        return {"idx": idx["paragraph"], "passage": {"text": row["paragraph"], "questions": [
            {"question": row["question"], "idx": idx["question"],
             "answers": [{"text": row["answer"], "idx": idx["answer"], "label": row["label"]}]}]}}
    if task.reader == "record":
        return {"idx": row["idx"]["passage"], "passage": {
            "text": row["passage"], "entities": []}, "_entities": row["entities"],
            "qas": [{"query": row["query"], "idx": row["idx"]["query"],
                     "answers": [{"text": a} for a in row["answers"]]}]}
    return row


def read_hub(task: Task, split: str) -> Split:
    """A split from the Hugging Face hub (needs internet or a warm cache)."""
    hub_split = task.hub_splits.get(split, split)
    if hub_split is None:
        raise TaskUnavailable(f"the hub copy of {task.name} has no labelled {split} split")
    try:
        import datasets

        rows = datasets.load_dataset(task.hub[0], task.hub[1], split=hub_split)
    except Exception as error:  # offline, unknown split, missing script support...
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TaskUnavailable(f"could not load {task.hub[0]}/{task.hub[1]} [{hub_split}] from "
                              f"the hub: {first}") from None
    source = f"hub:{task.hub[0]}/{task.hub[1]}[{hub_split}]"
    if task.suite == "glue":
        fields = _GLUE_HUB_FIELDS[task.hub[1]]
        examples = []
        for row in rows:
            label = row.get("label")
            label = None if label is None or label < 0 else (
                float(label) if task.kind == "regression" else int(label))
            examples.append({"texts": [row[f] for f in fields], "label": label,
                             "idx": row.get("idx", len(examples))})
        return Split(split, examples, len(examples), source)
    records = [(f"{source} row {i}", _hub_to_record(task, row)) for i, row in enumerate(rows)]
    examples, count = _parse_records(task, records)
    if task.reader == "record":  # hub gives entity strings, not character spans
        for (_, record), example in zip(records, examples):
            example["entities"] = list(dict.fromkeys(record["_entities"]))
            example["passage"] = _clean_record_passage(record["passage"]["text"])
    return Split(split, examples, count, source)


# --------------------------------------------------------------------------- entry point


def task_folder(task: Task, data_dir: str | Path, folder: str | None = None) -> Path:
    """``<data_dir>/<suite>/<folder>``, or ``<data_dir>/<folder>`` if that is how it is laid out."""
    root = Path(data_dir).expanduser()
    folder = folder or task.folder
    nested = root / task.suite / folder
    return nested if nested.is_dir() or not (root / folder).is_dir() else root / folder


def candidate_files(task: Task, split: str, data_dir: str | Path) -> list[tuple[Path, Any]]:
    """Every (path, TsvLayout or None) where ``split`` may live, in the order tried."""
    spec = task.files[split]
    alternatives = spec if isinstance(spec, list) else [spec]
    return [(task_folder(task, data_dir, folder) / name, layout)
            for folder in (task.folder, *task.other_folders)
            for name, layout in (a if isinstance(a, tuple) else (a, None) for a in alternatives)]


def read_split(task: Task, split: str, data_dir: str | None, source: str = "auto") -> Split:
    """Read one split. ``source``: files (``data_dir``), hub, or auto (files if present)."""
    if split not in task.files:
        raise TaskUnavailable(f"{task.name} has no {split} split")
    tried = ""
    if source in ("files", "auto") and data_dir:
        candidates = candidate_files(task, split, data_dir)
        for path, layout in candidates:
            if path.is_file():
                result = read_tsv(task, path, layout) if layout else read_jsonl(task, path)
                result.name = split
                return result
        tried = "no file " + " or ".join(str(path) for path, _ in candidates)
        if source == "files":
            raise TaskUnavailable(tried)
        log.info("%s; trying the hub for %s", tried, task.name)
    if source == "files":
        raise TaskUnavailable("eval.data_dir is not set (needed with eval.source=files)")
    try:
        return read_hub(task, split)
    except TaskUnavailable as reason:
        raise TaskUnavailable(f"{tried}; {reason}" if tried else str(reason)) from None
