"""The GLUE and SuperGLUE task registry: files, labels, metrics and how each is modelled.

A :class:`Task` is pure data. Readers (``readers.py``) turn its files into examples,
``encoding.py`` turns examples into token ids for its ``kind``, ``metrics.py`` scores it.

Kinds:
  classification  [CLS] fields... -> pooler -> softmax over ``labels``
  regression      same, one output, mean squared error (STS-B)
  choice          one sequence per choice, one score each, softmax over choices (COPA)
  span            [CLS] + mean-pooled marked spans -> classifier (WiC, WSC)
  multirc         one binary decision per answer option, grouped by question
  record          one score per candidate entity, the best one per query is the answer
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cramming.errors import ConfigError

GLUE_HUB = "nyu-mll/glue"
SUPERGLUE_HUB = "aps/super_glue"


@dataclass(frozen=True)
class TsvLayout:
    """Columns of one GLUE TSV file. Headerless files name columns by position ("0", "1")."""

    text: tuple[str, ...]
    label: str | None = "label"
    id: str | None = "index"
    header: bool = True


@dataclass(frozen=True)
class Task:
    name: str
    suite: str  # glue | superglue
    folder: str  # folder of the official distribution, e.g. "RTE"
    kind: str
    labels: tuple = ()  # label values as written in the files; class id = position
    metrics: tuple[str, ...] = ("accuracy",)
    # Entries of the suite average; each inner tuple is averaged into one entry.
    average: tuple[tuple[str, ...], ...] = (("accuracy",),)
    # split -> file name (JSONL) or (file, TsvLayout), or a list of such alternatives
    files: dict = field(default_factory=dict)
    eval_splits: dict = field(default_factory=lambda: {"": "validation"})  # suffix -> split
    test_splits: dict = field(default_factory=lambda: {"": "test"})
    hub: tuple[str, str] = ("", "")  # (dataset id, config)
    hub_splits: dict = field(default_factory=dict)  # our split -> hub split (default same)
    reader: str = ""  # name of the SuperGLUE JSONL parser in readers.py
    train_task: str | None = None  # diagnostic sets: predicted by this task's model
    submission: str = ""  # leaderboard file stem, e.g. "RTE" -> RTE.tsv / RTE.jsonl
    other_folders: tuple[str, ...] = ()  # other common layouts, tried after ``folder``

    @property
    def is_diagnostic(self) -> bool:
        return self.train_task is not None

    @property
    def num_outputs(self) -> int:
        """Logits per encoded sequence."""
        if self.kind == "regression" or self.kind in ("choice", "record"):
            return 1
        if self.kind == "multirc":
            return 2
        return len(self.labels)


def _glue(name: str, folder: str, text: tuple[str, ...], labels: tuple, metrics=("accuracy",),
          average=(("accuracy",),), label: str = "label", id_column: str | None = "index",
          kind: str = "classification", test_text: tuple[str, ...] | None = None,
          submission: str | None = None, **extra) -> Task:
    layout = TsvLayout(text=text, label=label, id=id_column)
    test = TsvLayout(text=test_text or text, label=None, id="index")
    files = {"train": ("train.tsv", layout), "validation": ("dev.tsv", layout),
             "test": ("test.tsv", test)}
    return Task(name=name, suite="glue", folder=folder, kind=kind, labels=labels, metrics=metrics,
                average=average, files=extra.pop("files", files), hub=(GLUE_HUB, extra.pop(
                    "hub_config", name)), submission=submission or folder, **extra)


def _superglue(name: str, folder: str, reader: str, labels: tuple = (), kind="classification",
               metrics=("accuracy",), average=(("accuracy",),), hub_config: str = "",
               **extra) -> Task:
    files = extra.pop("files", {"train": "train.jsonl", "validation": "val.jsonl",
                                "test": "test.jsonl"})
    return Task(name=name, suite="superglue", folder=folder, kind=kind, labels=labels,
                metrics=metrics, average=average, files=files, reader=reader,
                hub=(SUPERGLUE_HUB, hub_config or name), submission=folder, **extra)


NLI3 = ("entailment", "neutral", "contradiction")  # order of the hub's ClassLabel
NLI2 = ("entailment", "not_entailment")
BINARY = ("0", "1")
BOOL = (False, True)

_QQP = TsvLayout(("question1", "question2"), label="is_duplicate", id="id")
_MNLI_LAYOUT = TsvLayout(text=("sentence1", "sentence2"), label="gold_label")
_MNLI_TEST = TsvLayout(text=("sentence1", "sentence2"), label=None)

TASK_LIST: list[Task] = [
    # ----------------------------------------------------------------- GLUE
    _glue("cola", "CoLA", ("3",), BINARY, metrics=("mcc",), average=(("mcc",),),
          files={"train": ("train.tsv", TsvLayout(("3",), label="1", id=None, header=False)),
                 "validation": ("dev.tsv", TsvLayout(("3",), label="1", id=None, header=False)),
                 "test": ("test.tsv", TsvLayout(("sentence",), label=None))}),
    _glue("sst2", "SST-2", ("sentence",), BINARY, id_column=None),
    _glue("mrpc", "MRPC", ("#1 String", "#2 String"), BINARY, metrics=("accuracy", "f1"),
          average=(("f1",),), label="Quality", id_column=None),
    _glue("qqp", "QQP", ("question1", "question2"), BINARY, metrics=("accuracy", "f1"),
          average=(("f1",),), label="is_duplicate", id_column="id",
          files={"train": ("train.tsv", _QQP), "validation": ("dev.tsv", _QQP),
                 "test": ("test.tsv", TsvLayout(("question1", "question2"), None, "id"))}),
    _glue("stsb", "STS-B", ("sentence1", "sentence2"), (), kind="regression",
          metrics=("pearson", "spearman"), average=(("pearson",),), label="score",
          submission="STS-B"),
    _glue("mnli", "MNLI", ("sentence1", "sentence2"), NLI3,
          metrics=("accuracy_m", "accuracy_mm"), average=(("accuracy_m",), ("accuracy_mm",)),
          files={"train": ("train.tsv", _MNLI_LAYOUT),
                 "validation_matched": ("dev_matched.tsv", _MNLI_LAYOUT),
                 "validation_mismatched": ("dev_mismatched.tsv", _MNLI_LAYOUT),
                 "test_matched": ("test_matched.tsv", _MNLI_TEST),
                 "test_mismatched": ("test_mismatched.tsv", _MNLI_TEST)},
          eval_splits={"_m": "validation_matched", "_mm": "validation_mismatched"},
          test_splits={"-m": "test_matched", "-mm": "test_mismatched"}),
    _glue("qnli", "QNLI", ("question", "sentence"), NLI2),
    _glue("rte", "RTE", ("sentence1", "sentence2"), NLI2),
    _glue("wnli", "WNLI", ("sentence1", "sentence2"), BINARY),
    # GLUE's diagnostic set: test-only on the leaderboard (scored there with R3); when the
    # labelled diagnostic-full.tsv is present it is scored here with R3 (= multi-class MCC).
    # download_glue_data.py writes glue/diagnostic/, the leaderboard's naming glue/AX/AX.tsv.
    _glue("ax", "diagnostic", ("Premise", "Hypothesis"), NLI3, metrics=("mcc",),
          average=(), train_task="mnli", submission="AX", other_folders=("AX",),
          files={"validation": ("diagnostic-full.tsv",
                                TsvLayout(("Premise", "Hypothesis"), label="Label", id=None)),
                 "test": [(name, TsvLayout(("sentence1", "sentence2"), label=None))
                          for name in ("diagnostic.tsv", "AX.tsv")]},
          hub_splits={"validation": None}),
    # ------------------------------------------------------------ SuperGLUE
    _superglue("boolq", "BoolQ", "boolq", BOOL),
    _superglue("cb", "CB", "nli", ("entailment", "contradiction", "neutral"),
               metrics=("accuracy", "f1_macro"), average=(("accuracy", "f1_macro"),)),
    _superglue("copa", "COPA", "copa", (0, 1), kind="choice"),
    _superglue("multirc", "MultiRC", "multirc", (0, 1), kind="multirc", metrics=("em", "f1a"),
               average=(("em", "f1a"),)),
    _superglue("record", "ReCoRD", "record", kind="record", metrics=("em", "f1"),
               average=(("em", "f1"),)),
    _superglue("rte_sg", "RTE", "nli", NLI2, hub_config="rte"),
    _superglue("wic", "WiC", "wic", BOOL, kind="span"),
    _superglue("wsc", "WSC", "wsc", BOOL, kind="span", hub_config="wsc.fixed"),
    _superglue("axb", "AX-b", "nli", NLI2, metrics=("mcc",), average=(), train_task="rte_sg",
               files={"validation": "AX-b.jsonl", "test": "AX-b.jsonl"},
               hub_splits={"validation": "test"}),
    _superglue("axg", "AX-g", "nli", NLI2, metrics=("gender_parity", "accuracy"), average=(),
               train_task="rte_sg", files={"validation": "AX-g.jsonl", "test": "AX-g.jsonl"},
               hub_splits={"validation": "test"}),
]

TASKS: dict[str, Task] = {task.name: task for task in TASK_LIST}
# Friendly spellings accepted on the command line.
ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "superglue_rte": "rte_sg", "ax-b": "axb",
           "ax-g": "axg", "wsc.fixed": "wsc"}


def get_task(name: str) -> Task:
    """Look a task up by name (case-insensitive); ConfigError listing the allowed names."""
    key = ALIASES.get(str(name).lower(), str(name).lower())
    if key not in TASKS:
        raise ConfigError(f"Unknown task '{name}' in eval.tasks. Allowed tasks: "
                          f"{', '.join(TASKS)}")
    return TASKS[key]
