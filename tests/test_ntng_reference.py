"""NTNG's own entry scripts run NTNG's learning-rate schedule: the train preset they preselect,
against the curve NTNG's code computes (reference fixture schedules/ntng-bert-o3-*.json)."""

import json

import pytest

from cramming.cli import preset_overrides
from cramming.config import compose, load_pretrain_config
from cramming.config.foreign import NTNG_SETUP
from cramming.schedules import lr_factor

FIXTURE = ("schedules", "ntng-bert-o3-budget-one-cycle.json")


def ntng_curve(shared_reference) -> dict:
    return json.loads(shared_reference.joinpath(*FIXTURE).read_text())


def test_ntng_scripts_preselect_the_train_preset_of_ntngs_curve(shared_reference):
    fixture = ntng_curve(shared_reference)
    assert fixture["source"].startswith("JeanKaddour/NoTrainNoGain")
    assert f"train/{NTNG_SETUP['train']}.yaml" in fixture["source"]
    arguments = ["name=n", "budget=1", "seed=0"]  # NTNG's README command, as typed
    cfg = load_pretrain_config(compose("pretrain", [*preset_overrides(NTNG_SETUP, arguments),
                                                    *arguments]))
    assert (cfg.train.name, cfg.arch.name) == (NTNG_SETUP["train"], NTNG_SETUP["arch"])


def test_ntng_scripts_follow_ntngs_lr_curve(shared_reference):
    fixture = ntng_curve(shared_reference)
    arguments = ["name=n", "budget=1", "seed=0"]
    cfg = load_pretrain_config(compose("pretrain", [*preset_overrides(NTNG_SETUP, arguments),
                                                    *arguments]))
    for progress, expected in zip(fixture["progress"], fixture["lr_factor"]):
        assert lr_factor(progress, cfg.train) == pytest.approx(expected, abs=1e-9), progress
