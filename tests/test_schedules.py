"""Schedules are functions of budget progress: check them at 0, 0.5 and 1."""

import pytest

from cramming.config.schema import TrainConfig
from cramming.schedules import batch_size_at, lr_factor, mask_prob_at


def test_triangle_peaks_at_half_and_ends_at_zero():
    train = TrainConfig(scheduler="linear", lr_start=0.0, warmup=0.5)
    assert lr_factor(0.0, train) == 0.0
    assert lr_factor(0.25, train) == pytest.approx(0.5)
    assert lr_factor(0.5, train) == pytest.approx(1.0)
    assert lr_factor(0.75, train) == pytest.approx(0.5)
    assert lr_factor(1.0, train) == pytest.approx(0.0)


def test_start_fraction_and_cooldown_to_an_end_value():
    train = TrainConfig(scheduler="constant", lr_start=0.5, warmup=0.2, cooldown=0.2,
                        lr_end=0.1)
    assert lr_factor(0.0, train) == pytest.approx(0.5)
    assert lr_factor(0.1, train) == pytest.approx(0.75)
    assert lr_factor(0.5, train) == pytest.approx(1.0)
    assert lr_factor(0.9, train) == pytest.approx(0.55)  # halfway from 1 down to 0.1
    assert lr_factor(1.0, train) == pytest.approx(0.1)


@pytest.mark.parametrize(
    "scheduler, mid, end",
    [("cosine", 0.5, 0.0), ("linear", 0.5, 0.0), ("constant", 1.0, 1.0)],
)
def test_other_shapes_without_warmup(scheduler, mid, end):
    train = TrainConfig(scheduler=scheduler, lr_start=0.0, warmup=0.0)
    assert lr_factor(0.0, train) == pytest.approx(1.0)
    assert lr_factor(0.5, train) == pytest.approx(mid)
    assert lr_factor(1.0, train) == pytest.approx(end)


def test_min_lr_ratio_is_the_floor():
    train = TrainConfig(scheduler="cosine", lr_start=0.0, warmup=0.0, min_lr_ratio=0.1)
    assert lr_factor(1.0, train) == pytest.approx(0.1)


def test_batch_size_ramp_in_whole_microbatches():
    train = TrainConfig(batch_size=1024, batch_size_ramp=0.5)
    assert batch_size_at(0.0, train, 64) == 64
    mid = batch_size_at(0.25, train, 64)
    assert mid % 64 == 0 and 64 < mid < 1024
    assert batch_size_at(0.5, train, 64) == 1024
    assert batch_size_at(1.0, train, 64) == 1024
    assert batch_size_at(0.0, TrainConfig(batch_size=1024, batch_size_ramp=0.0), 64) == 1024


def test_masking_rate_schedule():
    assert mask_prob_at(0.7, TrainConfig(mask_prob=0.25)) == 0.25
    ramp = TrainConfig(mask_prob=0.4, mask_prob_end=0.15)
    assert mask_prob_at(0.0, ramp) == pytest.approx(0.4)
    assert mask_prob_at(0.5, ramp) == pytest.approx(0.275)
    assert mask_prob_at(1.0, ramp) == pytest.approx(0.15)
