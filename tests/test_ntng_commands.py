"""NTNG's and Cramming's commands as typed: every command of NTNG's bert/README.md and the main
Cramming commands compose through our config entry point (their keys translated, one log
line each), and a representative set runs end to end on tiny data."""

import importlib
import logging
import math
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from cramming.backend.metrics import read_jsonl
from cramming.cli import preset_overrides
from cramming.config import compose, load_pretrain_config
from cramming.config.foreign import GROUP_ALIASES, PRETRAIN_RULES
from cramming.errors import ConfigError
from cramming.evaluation.config import validate_eval_config
from cramming.pretrain import run_pretraining
from efficient_training.rho_loss import IrreducibleLosses
from tests.conftest import REPO_ROOT

IL = "outputs/il_losses/c4"
# (JeanKaddour/NoTrainNoGain, bert/README.md), placeholders filled in; then Cramming's
# (JonasGeiping/cramming, README.md). (id, script, arguments as typed)
NTNG_COMMANDS = [
    ("baseline", "pretrain_bert.py", "name=n budget=1 seed=0"),
    ("stacking", "pretrain_bert.py", "name=n budget=1 seed=0 train.stacking.enabled=True"),
    ("layer_drop", "pretrain_bert.py", "name=n budget=1 seed=0 arch.layer_drop.enabled=True"),
    ("sb", "pretrain_bert_sb.py", "name=n budget=1 seed=0 train.validation_set.fraction=0.2 "
                                  "impl.validate_every_hours=3"),
    ("sb_free", "pretrain_bert_sb.py", "name=n budget=1 seed=0 train.validation_set.fraction=0.2 "
                                       "impl.validate_every_hours=3 "
                                       "train.track_forward_pass_only=false"),
    ("il_model", "pretrain_bert.py", "name=il_model budget=1 train.validation_set.il_model=True "
                                     "train.validation_set.fraction=0.2"),
    ("rho", "pretrain_bert_rho_loss.py", "name=n budget=1 seed=0 data=c4-subset-random "
                                         "train.validation_set.fraction=0.2 "
                                         "impl.validate_every_hours=3 "
                                         f"train.rho_loss.il_losses_path={IL}.npz "
                                         "train.rho_loss.mega_batch_size=3072"),
    ("rho_free", "pretrain_bert_rho_loss.py", "name=n budget=1 seed=0 data=bookcorpus-wikitext "
                                              "train.validation_set.fraction=0.2 "
                                              "impl.validate_every_hours=3 "
                                              f"train.rho_loss.il_losses_path={IL}.npz "
                                              "train.rho_loss.mega_batch_size=3072 "
                                              "train.track_forward_pass_only=false"),
    ("bf16", "pretrain_bert.py", "name=n budget=1 seed=0 "
                                 "impl.mixed_precision_target_dtype=bfloat16"),
    ("lion", "pretrain_bert.py", "name=n budget=1 seed=0 "
                                 "impl.mixed_precision_target_dtype=bfloat16 train/optim=lion "
                                 "train.optim.lr=1e-4 "
                                 "train.optim.weight_decay=0.1"),
    ("sophia", "pretrain_bert_sophia.py", "name=n budget=1 seed=0 "
                                          "impl.mixed_precision_target_dtype=bfloat16 "
                                          "train/optim=sophiag train.optim.rho=0.03 "
                                          "train.optim.lr=1e-3 train.optim.weight_decay=0.01"),
    ("sophia_free", "pretrain_bert_sophia.py", "name=n budget=1 seed=0 "
                                               "impl.mixed_precision_target_dtype=bfloat16 "
                                               "train/optim=sophiag train.optim.rho=0.03 "
                                               "train.optim.lr=1e-3 train.optim.weight_decay=0.01 "
                                               "train.sophia.free_updates=True"),
    ("steps", "pretrain_bert.py", "name=n budget=steps train.steps=96000"),
    ("cramming", "pretrain.py", "name=amp_b8192_cb_o4_final arch=crammed-bert train=bert-o4 "
                                "data=bookcorpus-wikipedia"),
]
EVAL_COMMANDS = [
    ("glue", "name=n eval=glue_sane impl.microbatch_size=16 impl.shuffle_in_dataloader=true "
             "seed=0"),
    ("glue_bf16", "name=n eval=glue_sane impl.microbatch_size=16 impl.shuffle_in_dataloader=true "
                  "seed=0 impl.mixed_precision_target_dtype=bfloat16"),
    ("superglue", "name=n eval=SuperGLUE impl.microbatch_size=16 seed=0"),
    ("cramming", "eval=GLUE_sane name=amp_b8192_cb_o4_final eval.checkpoint=latest "
                 "impl.microbatch_size=16 impl.shuffle_in_dataloader=True "
                 "impl.compile_torch=False"),
]
# What each command must mean here: (dotted key, value)
EXPECT = {
    "baseline": [("method.name", "none"), ("budget_kind", "hours")],
    "stacking": [("method.stacking.enabled", True), ("method.stacking.at", [0.125, 0.3])],
    "layer_drop": [("method.layer_drop.enabled", True), ("method.layer_drop.rescale", False)],
    "sb": [("method.selection", "selective_backprop"), ("data.val_fraction", 0.2),
           ("arch.name", "bert-c5"), ("train.name", "bert-o3"),
           ("rst.charge_scoring_passes", True)],
    "sb_free": [("rst.charge_scoring_passes", False)],
    "il_model": [("method.train_on_held_out", True), ("data.val_fraction", 0.2)],
    "rho": [("method.selection", "rho_loss"), ("method.rho_loss.mega_batch_size", 3072),
            ("method.rho_loss.il_losses", f"{IL}.npz"), ("data.name", "c4-subset-random"),
            ("train.batch_size", 1536)],
    "rho_free": [("rst.charge_scoring_passes", False), ("data.name", "bookcorpus-wikitext")],
    "bf16": [("impl.precision", "bf16")],
    "lion": [("train.optim.name", "lion"), ("train.optim.lr", 1e-4),
             ("train.optim.weight_decay", 0.1)],
    "sophia": [("train.optim.name", "sophiag"), ("train.optim.rho", 0.03),
               ("rst.charge_hessian_passes", True), ("arch.name", "bert-c5")],
    "sophia_free": [("rst.charge_hessian_passes", False)],
    "steps": [("budget_kind", "steps"), ("budget", math.ceil(96000 * 128 / 8192))],
    "cramming": [("arch.name", "crammed-bert"), ("train.name", "bert-o4")],
}
EVAL_EXPECT = {
    "glue": [("eval.name", "GLUE_sane"), ("impl.microbatch_size", 16), ("seed", 0)],
    "glue_bf16": [("impl.precision", "bf16")],
    "superglue": [("eval.name", "SuperGLUE")],
    "cramming": [("eval.name", "GLUE_sane"), ("impl.compile", False)],
}


def value_at(cfg, key):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def translated_arguments(arguments: list[str]) -> list[str]:
    """The arguments that are NTNG's / Cramming's keys (budget=steps is logged with
    train.steps in one combined line)."""
    return [a for a in arguments if (a.split("=")[0] in PRETRAIN_RULES and
                                     a.split("=")[0] not in ("budget", "train.steps"))
            or tuple(a.split("=", 1)) in GROUP_ALIASES]


def script_overrides(script: str, arguments: list[str]) -> list[str]:
    """What the entry script hands to Hydra: its preset (unless typed), then the arguments."""
    preset = getattr(importlib.import_module(script.removesuffix(".py")), "PRESET", {})
    return [*preset_overrides(preset, arguments), *arguments]


@pytest.mark.parametrize(("name", "script", "command"), NTNG_COMMANDS,
                         ids=[c[0] for c in NTNG_COMMANDS])
def test_every_pretraining_command_composes_with_its_meaning(name, script, command, caplog):
    arguments = command.split()
    with caplog.at_level(logging.WARNING, logger="cramming.foreign"):
        cfg = load_pretrain_config(compose("pretrain", script_overrides(script, arguments)))
    for key, value in EXPECT[name]:
        assert value_at(cfg, key) == value, key
    lines = [r.getMessage() for r in caplog.records]
    for argument in translated_arguments(arguments):  # one line per translated key
        assert sum(f"key {argument} is" in line for line in lines) == 1, (argument, lines)


@pytest.mark.parametrize(("name", "command"), EVAL_COMMANDS, ids=[c[0] for c in EVAL_COMMANDS])
def test_every_eval_command_composes(name, command):
    cfg = validate_eval_config(compose("eval", command.split()))
    for key, value in EVAL_EXPECT[name]:
        assert value_at(cfg, key) == value, key


@pytest.mark.parametrize(("arguments", "ours"), [
    (["train.stacking.reset_optim=true"], "method.stacking"),
    (["train.sophia.hess_update_frequency_typo=3"], "train.optim.hessian_interval"),
    (["train.validation_set.enabled=false"], "data.val_fraction"),
    (["impl.shuffle_in_dataloader=false"], "always shuffled"),
    (["train.steps=100"], "budget_kind=steps"),
    (["impl.mixed_precision_target_dtype=float64"], "impl.precision"),
])
def test_keys_without_meaning_fail_in_one_line_naming_ours(arguments, ours):
    with pytest.raises(ConfigError, match=ours) as error:
        compose("pretrain", arguments)
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="model_path"):
        compose("eval", ["eval.checkpoint=hf://bert-base-uncased"])


def test_representative_commands_run_two_steps(tiny_overrides, tmp_path):
    """Stacking, layer drop, selective backprop, Lion, Sophia: as typed, tiny budget/data."""
    for number, (name, script, command) in enumerate(NTNG_COMMANDS):
        if name not in ("stacking", "layer_drop", "sb_free", "lion", "sophia_free"):
            continue
        # a steps budget stands in for NTNG's hours, so its hour-based validation interval
        # does not apply (commands as typed, with hours, are composed above)
        typed = [a for a in command.split()
                 if not a.startswith(("budget=", "impl.validate_every_hours="))]
        arguments = [*typed, *tiny_overrides, "dryrun=true"]
        if name == "stacking":  # bert-tiny's depth: 1 -> 2 -> 4 instead of NTNG's 4 -> 8 -> 16
            arguments += ["arch.num_layers=4", "method.stacking.initial_layers=1"]
        cfg = load_pretrain_config(compose("pretrain", script_overrides(script, arguments)))
        summary = run_pretraining(cfg, tmp_path / str(number))
        assert summary["steps"] == 2, name


def run(script_and_args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, *script_and_args], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_ntng_rho_loss_pipeline_and_eval_as_typed(tiny_overrides, pretrain_base_dir):
    """NTNG's RHO-Loss recipe (IL model, extraction, RHO run) and its GLUE command, the last
    three through the real entry scripts."""
    base = pretrain_base_dir  # shares the session's processed-data cache
    tiny = [a for a in tiny_overrides if not a.startswith("budget=")] + ["budget=2"]
    il_model = ["name=il_model", "train.validation_set.il_model=True",
                "train.validation_set.fraction=0.2", *tiny]
    run_pretraining(load_pretrain_config(compose("pretrain", il_model)),
                    base / "il_model" / "pretrain" / "2023-01-01_00-00-00")
    run(["efficient_training/extract_il_losses.py", "name=il_model", f"base_dir={base}"])
    il = IrreducibleLosses.load(base / "il_model" / "il_losses.npz")
    assert np.isfinite(il.losses).all() and len(il.ids) > 100

    rho = run(["pretrain_bert_rho_loss.py", "name=rho", "seed=0",
               "train.validation_set.fraction=0.2",  # impl.validate_every_hours: hours only
               f"train.rho_loss.il_losses_path={base / 'il_model'}",
               "train.rho_loss.mega_batch_size=3072", "train.track_forward_pass_only=false",
               *tiny])
    assert "train.rho_loss.mega_batch_size=3072 is method.rho_loss.mega_batch_size=3072" \
        in rho.stderr
    (folder,) = (base / "rho" / "pretrain").glob("*_*")
    records = read_jsonl(folder / "metrics.jsonl")
    assert len(records) == 2 and all(np.isfinite(r["reducible_loss"]) for r in records)

    glue = run(["eval.py", "name=rho", "eval=glue_sane", "impl.microbatch_size=16",
                "impl.shuffle_in_dataloader=true", "seed=0", "--cfg", "job"])
    assert "eval=glue_sane is eval=GLUE_sane here" in glue.stderr
    assert "name: GLUE_sane" in glue.stdout and "microbatch_size: 16" in glue.stdout


def test_il_losses_path_takes_ntngs_unpacked_chunk_folder(tmp_path):
    chunks = tmp_path / "il_losses" / "examples_to_loss"  # as NTNG's tar unpacks
    chunks.mkdir(parents=True)
    (chunks / "dict_chunk_0.pkl").write_bytes(pickle.dumps({0: 2.5, 1: 0.5}))
    (chunks / "dict_chunk_1.pkl").write_bytes(pickle.dumps({2: 1.0}))
    cfg = load_pretrain_config(compose("pretrain", [
        "method=rho_loss", f"train.rho_loss.il_losses_path={tmp_path / 'il_losses'}"]))
    il = IrreducibleLosses.load(cfg.method.rho_loss.il_losses)
    assert il.ids.tolist() == [0, 1, 2] and il.losses.tolist() == [2.5, 0.5, 1.0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="neither il_losses.npz"):
        compose("pretrain", [f"train.rho_loss.il_losses_path={tmp_path / 'empty'}"])
