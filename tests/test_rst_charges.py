"""RST charges the work done: by tokens and row length, and never 0 for a dropped stack."""

import json

import pytest

from cramming.clock import Work
from rst import RSTClock, load_table
from rst.table import TABLES_DIR
from tests.test_rst_clock import STEP, TRAIN, Capture, config, write_test_table

NTNG_TABLE = TABLES_DIR / "rtx3090-bert-c5-ntng-v1.json"


def ntng_clock(microbatch_size: int = 128) -> RSTClock:
    cfg = config(["arch=bert-c5", "budget_kind=rst", "budget=1", "rst.device=rtx3090",
                  f"impl.microbatch_size={microbatch_size}", "train.batch_size=1024",
                  "data.paths=[x]"])
    return RSTClock.from_config(cfg, vocab_size=32768)


def tiny_clock(tmp_path, *extra) -> RSTClock:
    """bert-tiny (2 layers), sequence 64, microbatch 8, on the hand-made test table."""
    base = config(["arch=bert-tiny", "data.seq_length=64", "impl.microbatch_size=8",
                   "train.batch_size=16", "data.paths=[x]", *extra])
    tables = write_test_table(tmp_path / "tables", base).parent
    cfg = config(["arch=bert-tiny", "data.seq_length=64", "impl.microbatch_size=8",
                  "train.batch_size=16", "data.paths=[x]", "budget_kind=rst", "budget=1",
                  "rst.device=testdev", f"rst.tables_dir={tables}", *extra])
    return RSTClock.from_config(cfg, vocab_size=2000)


def test_ntng_table_is_exact_at_its_own_shape():
    table, clock = load_table(NTNG_TABLE), ntng_clock()
    for layers in range(1, 17):
        work = Work(sequences=128, tokens=128 * 128, active_layers=layers)
        assert clock.work_seconds(work) == table.seconds_by_kind["train"][layers]
    assert clock.work_seconds(Work(sequences=128, tokens=128 * 128)) == 0.2253  # full depth
    assert clock.work_seconds(Work(128, 128 * 128, kind="forward")) == 0.09285
    # other microbatch sizes scale linearly, as NTNG's get_time_per_step
    assert ntng_clock(64).work_seconds(Work(64, 64 * 128)) == pytest.approx(0.2253 / 2)


def test_the_same_tokens_in_shorter_rows_are_not_charged_more(tmp_path):
    clock = tiny_clock(tmp_path)
    full = clock.work_seconds(Work(sequences=8, tokens=512))  # 8 x 64: the table's shape
    assert full == TRAIN[2]
    short = clock.work_seconds(Work(sequences=32, tokens=512))  # 32 x 16: the same tokens
    # Charged by rows this was 4 x TRAIN[2]; by tokens it is at most the full-length cost,
    # less by the attention FLOPs that rows of 16 save.
    assert 0.5 * full < short < full
    assert short == pytest.approx(full * clock.length_factor(2, 16))
    assert clock.length_factor(2, 64) == 1.0
    assert clock.length_factor(2, 16) < clock.length_factor(2, 32) < 1.0
    half = clock.work_seconds(Work(sequences=4, tokens=256))  # a partial microbatch
    assert half == pytest.approx(full / 2)


def test_a_microbatch_with_every_layer_dropped_still_costs(tmp_path):
    clock = tiny_clock(tmp_path)
    zero = clock.work_seconds(Work(sequences=8, tokens=512, active_layers=0))
    assert zero == pytest.approx(2 * TRAIN[1] - TRAIN[2])  # extrapolated from depths 1 and 2
    assert 0 < zero < clock.work_seconds(Work(sequences=8, tokens=512, active_layers=1))
    ntng = ntng_clock()
    assert ntng.work_seconds(Work(128, 128 * 128, active_layers=0)) == pytest.approx(
        0.02521 - (0.03837 - 0.02521))
    # NTNG published forward-only times at 16 layers only: the train row's depth profile
    forward = ntng.work_seconds(Work(128, 128 * 128, kind="forward", active_layers=0))
    assert 0 < forward < 0.09285


def test_zero_layers_fall_back_to_flops_when_the_table_cannot_extrapolate(tmp_path):
    clock = tiny_clock(tmp_path)
    path = next((tmp_path / "tables").glob("*.json"))
    data = json.loads(path.read_text())
    data["seconds"]["train"] = {"2": TRAIN[2]}  # one depth: nothing to extrapolate from
    path.write_text(json.dumps(data))
    clock.table = load_table(path)
    zero = clock.work_seconds(Work(sequences=8, tokens=512, active_layers=0))
    assert 0 < zero < TRAIN[2]
    assert zero == pytest.approx(TRAIN[2] * clock._flops_per_token(0, 64)
                                 / clock._flops_per_token(2, 64))


def test_a_sequence_length_schedule_is_charged_by_tokens(tiny_overrides, tmp_path):
    schedule = ["train.seq_length_schedule=[[0,16],[0.5,32],[0.75,64]]"]
    base = config(tiny_overrides, *schedule)
    tables = write_test_table(tmp_path / "tables", base).parent
    cfg = config(tiny_overrides, *schedule, "budget_kind=rst", f"budget={0.3 / 3600}",
                 "rst.device=testdev", f"rst.tables_dir={tables}",
                 "train.validate_at_end=false")
    capture = Capture()
    from cramming.pretrain import run_pretraining

    run_pretraining(cfg, tmp_path / "run", hooks=[capture])
    trainer = capture.trainer
    records = [json.loads(line) for line in
               (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lengths = [record["seq_length"] for record in records if "seq_length" in record]
    assert len(lengths) == trainer.step and {16, 64} <= set(lengths)
    # every step: 2 microbatches of 8 x 64 tokens, however they are cut into rows
    hand = sum(2 * TRAIN[2] * trainer.clock.length_factor(2, length) + STEP
               for length in lengths)
    assert trainer.clock.seconds() == pytest.approx(hand)
    by_rows = sum(2 * TRAIN[2] * 64 / length + STEP for length in lengths)
    assert trainer.clock.seconds() < by_rows
    assert trainer.tokens == trainer.step * 16 * 64
