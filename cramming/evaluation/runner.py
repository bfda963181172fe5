"""Evaluate a pretrained checkpoint: load data, fine-tune per task and seed, report.

All task data is read and validated before any fine-tuning starts, so a malformed file
fails in seconds, not after hours of training on the tasks before it.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cramming.errors import CheckpointError, DataError
from cramming.evaluation.config import EvalConfig, EvalSettings
from cramming.evaluation.encoding import FieldEncoder, Instance, encode_examples, num_spans
from cramming.evaluation.finetune import finetune, first_task_warmup, plan_steps, predict
from cramming.evaluation.heads import TaskModel, set_encoder_dropout
from cramming.evaluation.readers import Split, TaskUnavailable, read_split
from cramming.evaluation.results import (
    best_epoch,
    suite_averages,
    summarize_task,
    to_percent,
    write_results,
)
from cramming.evaluation.scoring import compute_metrics, example_predictions
from cramming.evaluation.submission import write_predictions
from cramming.evaluation.tasks import Task, get_task

log = logging.getLogger(__name__)


@dataclass
class TaskData:
    task: Task
    train: Split | None = None
    evals: dict[str, Split] = field(default_factory=dict)  # metric suffix -> labelled split
    tests: dict[str, Split] = field(default_factory=dict)  # submission suffix -> split
    diagnostics: list[TaskData] = field(default_factory=list)
    subsampled: dict[str, dict] = field(default_factory=dict)  # split -> {"used", "of"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _subset(split: Split, cap: int | None, data: TaskData) -> Split:
    """A fixed random subset (same for every fine-tuning seed), kept in file order.

    A cut split is recorded in ``data.subsampled``, so results never pass it off as full.
    """
    if cap is None or len(split.examples) <= cap:
        return split
    keep = sorted(np.random.default_rng(0).choice(len(split.examples), cap, replace=False))
    data.subsampled[split.name] = {"used": cap, "of": len(split.examples)}
    return Split(split.name, [split.examples[i] for i in keep], split.rows, split.source)


def load_task_data(task: Task, settings: EvalSettings) -> TaskData:
    """Read the task's splits; TaskUnavailable if what it needs is absent."""
    read = lambda split: read_split(task, split, settings.data_dir, settings.source)  # noqa: E731
    data = TaskData(task)
    if not task.is_diagnostic:
        data.train = _subset(read("train"), settings.max_train_examples, data)
        if not data.train.labelled:
            raise TaskUnavailable(f"train split {data.train.source} has no labels")
    missing = []
    for suffix, split in task.eval_splits.items():
        try:
            found = read(split)
        except TaskUnavailable as reason:
            missing.append(str(reason))
            continue
        if found.labelled:
            data.evals[suffix] = _subset(found, settings.max_eval_examples, data)
    if settings.predict_test:
        for suffix, split in task.test_splits.items():
            try:
                data.tests[suffix] = read(split)
            except TaskUnavailable:
                pass
    if not data.evals and not (task.is_diagnostic and data.tests):
        raise TaskUnavailable("; ".join(missing) or "no labelled evaluation split")
    return data


def plan_tasks(names: list[str]) -> tuple[list[Task], list[Task]]:
    """(tasks to fine-tune, all tasks to report). Diagnostics pull in their train task."""
    reported = list(dict.fromkeys(get_task(n).name for n in names))
    for name in list(reported):
        needed = get_task(name).train_task
        if needed and needed not in reported:
            reported.insert(reported.index(name), needed)
    tasks = [get_task(n) for n in reported]
    return [t for t in tasks if not t.is_diagnostic], tasks


class Evaluator:
    """Fine-tunes and scores tasks on one pretrained encoder."""

    def __init__(self, encoder: torch.nn.Module, tokenizer: Any, cfg: EvalConfig, out_dir: Path):
        self.encoder, self.tokenizer, self.cfg, self.out_dir = encoder, tokenizer, cfg, out_dir
        self.settings = cfg.eval
        self.device = resolve_device(cfg.impl.device)
        if cfg.impl.threads:
            torch.set_num_threads(cfg.impl.threads)
        arch_max = getattr(getattr(encoder, "arch", None), "max_seq_length", None)
        self.max_length = self.settings.max_seq_length
        if arch_max and arch_max < self.max_length:
            log.warning("eval.max_seq_length=%d exceeds the model's %d positions; using %d.",
                        self.max_length, arch_max, arch_max)
            self.max_length = arch_max
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.field_encoder = FieldEncoder(tokenizer, self.max_length,
                                          self.settings.empty_second_segment)

    def encode(self, task: Task, split: Split) -> list[Instance]:
        return encode_examples(task, split.examples, self.tokenizer, self.max_length,
                               self.field_encoder)

    def _score(self, model: TaskModel, task: Task, splits: dict[str, tuple[Split, list]]) -> dict:
        metrics = {}
        for suffix, (split, instances) in splits.items():
            outputs = predict(model, task, instances, self.settings.eval_batch_size, self.device,
                              self.pad_id, self.cfg.impl.precision)
            predictions = example_predictions(task, split.examples, instances, outputs)
            metrics.update(compute_metrics(task, split.examples, predictions, suffix))
        return to_percent(metrics)

    def _write_tests(self, model: TaskModel, task: Task, tests: dict, seed: int) -> list[str]:
        written = []
        for suffix, (split, instances) in tests.items():
            outputs = predict(model, task, instances, self.settings.eval_batch_size, self.device,
                              self.pad_id, self.cfg.impl.precision)
            predictions = example_predictions(task, split.examples, instances, outputs)
            folder = self.out_dir / "predictions" / f"seed-{seed}"
            written.append(str(write_predictions(task, suffix, split.examples, predictions,
                                                 folder)))
        return written

    def run_task(self, data: TaskData, seeds: list[int],
                 warmup_steps: int | None = None) -> dict[str, dict]:
        """Fine-tune ``data.task`` once per seed; results of it and its diagnostics.

        ``warmup_steps`` replaces the per-task warmup (``eval.warmup_from_first_task``).
        """
        task, settings = data.task, self.settings
        train = self.encode(task, data.train)
        evals = {s: (split, self.encode(task, split)) for s, split in data.evals.items()}
        tests = {s: (split, self.encode(task, split)) for s, split in data.tests.items()}
        diagnostics = [(d, {s: (split, self.encode(d.task, split)) for s, split in d.evals.items()},
                        {s: (split, self.encode(d.task, split)) for s, split in d.tests.items()})
                       for d in data.diagnostics]
        plan = plan_steps(len(train), settings, warmup_steps)
        results = {task.name: _task_entry(task, data, plan)}
        results.update({d.task.name: _task_entry(d.task, d, None) for d in data.diagnostics})
        for seed in seeds:
            set_seed(seed)
            encoder = copy.deepcopy(self.encoder)
            if settings.encoder_dropout is not None:
                set_encoder_dropout(encoder, settings.encoder_dropout)
            model = TaskModel(encoder, task.num_outputs, num_spans(task),
                              settings.classifier_dropout,
                              getattr(getattr(self.encoder, "arch", None), "init_std", 0.02),
                              settings.pooler, settings.head_dim)
            model.to(self.device)
            score = functools.partial(self._score, model, task, evals)
            history = finetune(
                model, task, train, settings, seed, self.device, self.pad_id,
                self.cfg.impl.microbatch_size, score,
                self.cfg.impl.precision, self.cfg.impl.progress_bar,
                desc=f"{task.name} seed {seed}", plan=plan)
            best = best_epoch(task, history)
            run = {"epochs": history, "last": history[-1], "best": best,
                   "best_epoch": best["epoch"], "predictions": self._write_tests(
                       model, task, tests, seed)}
            results[task.name]["seeds"][str(seed)] = run
            log.info("%s seed %d: last epoch %s", task.name, seed,
                     {k: round(v, 2) for k, v in history[-1].items() if k in task.metrics})
            for diag, diag_evals, diag_tests in diagnostics:
                scores = self._score(model, diag.task, diag_evals)
                results[diag.task.name]["seeds"][str(seed)] = {
                    "last": scores, "best": scores,
                    "predictions": self._write_tests(model, diag.task, diag_tests, seed)}
        for name, entry in results.items():
            per_seed = {int(s): r for s, r in entry["seeds"].items()}
            if entry["status"] == "ok" and all(r["last"] for r in per_seed.values()):
                entry.update(summarize_task(get_task(name), per_seed))
            elif entry["status"] == "ok":
                entry.update(status="predicted", reason="no labelled split: test predictions only")
        return results


def _task_entry(task: Task, data: TaskData, plan) -> dict:
    entry = {"suite": task.suite, "status": "ok", "kind": task.kind, "metrics": list(task.metrics),
             "sources": {s.name: s.source for s in [data.train, *data.evals.values(),
                                                     *data.tests.values()] if s},
             "examples": {s.name: len(s.examples) for s in [data.train, *data.evals.values()] if s},
             "seeds": {}}
    if data.subsampled:
        entry["subsampled"] = data.subsampled
    if plan is not None:
        entry.update(steps=plan.total_steps, warmup_steps=plan.warmup_steps)
    if task.is_diagnostic:
        entry["predicted_by"] = task.train_task
    return entry


def run_evaluation(cfg: EvalConfig, out_dir: Path, encoder: torch.nn.Module, tokenizer: Any,
                   model_folder: str = "", on_result: Callable[[dict], None] | None = None
                   ) -> dict:
    """Fine-tune and score every task of ``cfg.eval``; write results.json / results.md."""
    settings = cfg.eval
    out_dir = Path(out_dir)
    trainable, reported = plan_tasks(settings.tasks)
    data: dict[str, TaskData] = {}
    skipped: dict[str, str] = {}
    for task in reported:
        try:
            data[task.name] = load_task_data(task, settings)
        except TaskUnavailable as reason:
            skipped[task.name] = str(reason)
            log.warning("Skipping %s: %s", task.name, reason)
    for task in reported:
        if task.is_diagnostic and task.name in data:
            if task.train_task in data:
                data[task.train_task].diagnostics.append(data[task.name])
            else:
                skipped[task.name] = f"needs the {task.train_task} model, which was skipped"
    evaluator = Evaluator(encoder, tokenizer, cfg, out_dir)
    task_results: dict[str, dict] = {}
    warmup_steps = None
    for task in trainable:
        if task.name in data:
            if settings.warmup_from_first_task and warmup_steps is None:
                warmup_steps = first_task_warmup(len(data[task.name].train.examples), settings)
            task_results.update(evaluator.run_task(data[task.name], settings.seeds, warmup_steps))
    for name, reason in skipped.items():
        task_results[name] = {"suite": get_task(name).suite, "status": "skipped",
                              "reason": reason}
    ordered = {t.name: task_results[t.name] for t in reported if t.name in task_results}
    results = {"name": cfg.name, "preset": settings.name, "model_folder": str(model_folder),
               "settings": dataclasses.asdict(settings),
               "unit": "percent", "headline": "last epoch", "seeds": list(settings.seeds),
               "tasks": ordered,
               "averages": suite_averages(reported, ordered, settings.seeds, settings.average)}
    write_results(results, out_dir)
    if on_result:
        on_result(results)
    if not any(entry["status"] != "skipped" for entry in ordered.values()):
        reasons = "; ".join(f"{name}: {entry['reason']}" for name, entry in ordered.items())
        raise DataError(f"Nothing was evaluated, every task was skipped ({reasons}). Point "
                        f"eval.data_dir at a folder with glue/ and superglue/, or go online.")
    return results


def load_checkpoint_for_eval(cfg: EvalConfig):
    """(encoder, tokenizer, folder) of the checkpoint ``cfg`` points at."""
    from cramming.backend.checkpoint import find_model_folder, load_model_folder

    folder = find_model_folder(cfg.base_dir, name=cfg.name, path=cfg.model_path)
    loaded = load_model_folder(folder)
    vocab = getattr(loaded.model, "vocab_size", None)
    if vocab is not None and len(loaded.tokenizer) > vocab:
        raise CheckpointError(f"Tokenizer in {folder / 'tokenizer'} has {len(loaded.tokenizer)} "
                              f"tokens but the model in {folder} only {vocab}.")
    return loaded.model, loaded.tokenizer, folder
