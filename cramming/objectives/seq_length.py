"""Sequence-length schedule: short rows early, full rows late, same tokens per batch.

The corpus is packed at ``data.seq_length``. While the schedule asks for a shorter length
``l`` (which must divide it), each row is cut into ``data.seq_length / l`` consecutive
rows, so a microbatch holds proportionally more, shorter sequences: tokens per microbatch,
and hence per optimizer step, stay constant while attention gets cheaper.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

from cramming.objectives.base import Microbatch, Objective


def seq_length_at(progress: float, schedule: list | None, full_length: int) -> int:
    """Length in force at ``progress`` for ``[[progress, length], ...]`` (None: full)."""
    if not schedule:
        return full_length
    length = int(schedule[0][1])
    for start, value in schedule:
        if progress >= float(start):
            length = int(value)
    return length


PIECE_KEY_STRIDE = 1 << 16  # a cut row's draw key: row key * stride + piece number


def cut_rows(rows: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    """Split every row into consecutive pieces of ``length`` (example ids repeated)."""
    input_ids = rows["input_ids"]
    pieces = input_ids.shape[1] // length
    if pieces <= 1:
        return rows
    cut = {"input_ids": input_ids.reshape(-1, length),
           "example_ids": rows["example_ids"].repeat_interleave(pieces)}
    if "keys" in rows:
        piece = torch.arange(pieces).repeat(input_ids.shape[0])
        cut["keys"] = rows["keys"].repeat_interleave(pieces) * PIECE_KEY_STRIDE + piece
    return cut


class SequenceLengthSchedule:
    """Wraps an objective and feeds it rows of the scheduled length."""

    def __init__(self, objective: Objective, schedule: list):
        self.objective, self.schedule = objective, schedule

    def microbatch(self, rows: dict[str, torch.Tensor], progress: float, index: int,
                   stream: int = 0) -> Microbatch:
        """The inner objective's microbatch on rows cut to the length in force."""
        length = seq_length_at(progress, self.schedule, rows["input_ids"].shape[1])
        return self.objective.microbatch(cut_rows(rows, length), progress, index, stream)

    def schedule_key(self, progress: float) -> Hashable:
        """The inner key and the length in force."""
        full = int(self.schedule[-1][1])
        return (self.objective.schedule_key(progress),
                seq_length_at(progress, self.schedule, full))

    def static_decode_fraction(self, seq_length: int) -> float | None:
        """None: the row length changes over the run."""
        return None

    def log_values(self, progress: float) -> dict[str, float]:
        """The inner objective's values plus the scheduled length (the last if it is full)."""
        full = int(self.schedule[-1][1])
        return {**self.objective.log_values(progress),
                "seq_length": seq_length_at(progress, self.schedule, full)}

    def __getattr__(self, name: str):
        if name == "objective":
            raise AttributeError(name)
        return getattr(self.objective, name)
