"""Run by tests under torchrun: pretrain through the real path, record what each rank saw."""

import json
import os
import sys
from pathlib import Path

from cramming.backend.hooks import TrainingHook
from cramming.config import compose, load_pretrain_config
from cramming.pretrain import run_pretraining


class RecordExamples(TrainingHook):
    def __init__(self):
        self.example_ids: list[int] = []
        self.progress: list[float] = []
        self.train_ids: list[int] = []

    def on_train_start(self, trainer):
        self.train_ids = trainer.train_data.example_ids.tolist()

    def select_batch(self, trainer, batch):
        self.example_ids.extend(batch.example_ids.tolist())
        return batch

    def after_step(self, trainer, record):
        self.progress.append(trainer.clock.progress())


if __name__ == "__main__":
    run_dir, overrides = Path(sys.argv[1]), sys.argv[2:]
    recorder = RecordExamples()
    summary = run_pretraining(load_pretrain_config(compose("pretrain", overrides)), run_dir,
                              hooks=[recorder])
    rank = int(os.environ.get("RANK", "0"))
    record = {"example_ids": recorder.example_ids, "steps": summary["steps"],
              "progress": recorder.progress,
              "train_ids": recorder.train_ids,
              "world_size": int(os.environ.get("WORLD_SIZE", "1"))}
    (run_dir / f"seen_rank{rank}.json").write_text(json.dumps(record))
