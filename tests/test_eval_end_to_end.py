"""Tiny encoder -> fine-tune on real task data -> official scores, results files, report."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cramming.architectures import build_model
from cramming.backend.checkpoint import load_model_folder, save_model_folder
from cramming.config import CONFIG_DIR, to_typed
from cramming.config.schema import ArchConfig
from cramming.errors import CheckpointError, ConfigError
from cramming.evaluation import load_checkpoint_for_eval, run_evaluation, validate_eval_config
from cramming.evaluation.readers import read_split
from cramming.evaluation.tasks import get_task
from cramming.report import find_runs
from cramming.report import main as report_main
from tests.test_eval_encoding import make_tokenizer

REPO = Path(__file__).resolve().parents[1]
STAMP = "2024-01-01_00-00-00"


def tiny_arch() -> ArchConfig:
    return to_typed(OmegaConf.load(CONFIG_DIR / "arch" / "bert-tiny.yaml"), ArchConfig)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, enwiki_files) -> Path:
    """outputs-like folder with one saved (randomly initialised) tiny model run."""
    root = tmp_path_factory.mktemp("outputs")
    tokenizer = make_tokenizer(enwiki_files)
    torch.manual_seed(0)
    model = build_model(tiny_arch(), vocab_size=len(tokenizer), pad_token_id=0)
    run = root / "tiny" / "pretrain" / STAMP
    save_model_folder(run / "model", model, tokenizer, {"arch": {"name": "bert-tiny"}})
    (run / "config.yaml").write_text("arch: {name: bert-tiny}\ntrain: {name: bert-o4}\n"
                                     "budget: 40\nbudget_kind: steps\nseed: 0\n")
    (run / "metrics.jsonl").write_text('{"step": 20, "loss": 7.5}\n{"step": 40, "loss": 6.25}\n'
                                       '{"step": 4')  # torn last line, as after a crash
    (run / "validation.jsonl").write_text('{"loss": 6.5, "accuracy": 0.1}\n')
    return root


def eval_config(**settings):
    base = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "eval" / "GLUE_sane.yaml"))
    base.update(settings)
    return validate_eval_config(OmegaConf.create(
        {"name": "tiny", "eval": base,
         "impl": {"device": "cpu", "threads": 1, "progress_bar": False}}))


def test_sst2_fine_tuning_learns(base_dir, shared_data, tmp_path):
    loaded = load_model_folder(base_dir / "tiny" / "pretrain" / STAMP / "model")
    cfg = eval_config(tasks=["sst2"], data_dir=str(shared_data), source="files", lr=1e-3,
                      epochs=3, max_train_examples=2000, max_eval_examples=400)
    results = run_evaluation(cfg, tmp_path, loaded.model, loaded.tokenizer)
    sst2 = results["tasks"]["sst2"]
    assert sst2["steps"] == 375 and sst2["warmup_steps"] == 38
    epochs = sst2["seeds"]["0"]["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    dev = read_split(get_task("sst2"), "validation", str(shared_data), "files").examples
    majority = 100 * max(sum(e["label"] for e in dev), len(dev) - sum(e["label"] for e in dev))
    accuracy = sst2["last"]["accuracy"]["mean"]
    assert accuracy > majority / len(dev) + 8, accuracy  # well above chance / majority class
    assert sst2["best"]["accuracy"]["mean"] >= accuracy
    assert results["averages"]["GLUE"]["last"]["mean"] == pytest.approx(accuracy)
    assert (tmp_path / "results.json").is_file() and (tmp_path / "results.md").is_file()


def test_eval_py_rte_and_cb_multi_seed(base_dir, shared_data):
    command = [sys.executable, str(REPO / "eval.py"), "name=tiny", f"base_dir={base_dir}",
               "eval=GLUE_sane", "eval.tasks=[rte,cb]", f"eval.data_dir={shared_data}",
               "eval.source=files", "eval.epochs=1", "eval.lr=1e-3", "eval.seeds=[0,1]",
               "eval.max_train_examples=160", "eval.max_eval_examples=120",
               "impl.device=cpu", "impl.threads=1", "impl.progress_bar=false"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| rte (train subsampled: 160 of 2490) (validation subsampled: 120 of 277) | " \
        "accuracy |" in done.stdout and "SuperGLUE partial average" in done.stdout
    (run,) = sorted((base_dir / "tiny" / "eval").iterdir())
    results = json.loads((run / "results.json").read_text())
    assert "| cb (train subsampled: 160 of 250) | f1_macro |" in (run / "results.md").read_text()
    rte, cb = results["tasks"]["rte"], results["tasks"]["cb"]
    assert rte["examples"] == {"train": 160, "validation": 120}
    for task, metrics in ((rte, ["accuracy"]), (cb, ["accuracy", "f1_macro"])):
        assert set(task["seeds"]) == {"0", "1"}
        for metric in metrics:
            summary = task["last"][metric]
            # the summary is over the two seeds' own last-epoch scores, in seed order
            per_seed = [task["seeds"][seed]["last"][metric] for seed in ("0", "1")]
            assert summary["values"] == pytest.approx(per_seed)
            assert 0 <= summary["mean"] <= 100
            assert summary["mean"] == pytest.approx(statistics.mean(per_seed))
            assert summary["median"] == pytest.approx(statistics.median(per_seed))
            assert summary["std"] == pytest.approx(statistics.stdev(per_seed))
    # CB: macro-F1 never exceeds what accuracy allows for the 3-class split
    assert cb["last"]["accuracy"]["mean"] > 0
    submission = run / "predictions" / "seed-0"
    assert len((submission / "glue" / "RTE.tsv").read_text().splitlines()) == 3001
    labels = {json.loads(line)["label"] for line in
              (submission / "superglue" / "CB.jsonl").read_text().splitlines()}
    assert labels <= {"entailment", "contradiction", "neutral"}
    assert results["averages"]["SuperGLUE"]["tasks"] == ["cb"]

    # The comparison report reads the run, its torn metrics file and this evaluation.
    (row,) = find_runs(base_dir)
    assert (row.arch, row.recipe, row.budget, row.budget_kind) == (
        "bert-tiny", "bert-o4", 40.0, "steps")
    assert (row.final_loss, row.val_loss, row.steps) == (6.25, 6.5, 40)
    assert set(row.downstream) == {("GLUE", "GLUE_sane"), ("SuperGLUE", "GLUE_sane")}
    assert "n=2" in row.downstream[("GLUE", "GLUE_sane")]
    assert "partial" in row.downstream[("GLUE", "GLUE_sane")]
    assert report_main([str(base_dir), "--png", str(base_dir / "report.png")]) == 0
    assert (base_dir / "report.png").stat().st_size > 1000


def test_every_preset_composes_and_validates():
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        for preset in sorted(p.stem for p in (CONFIG_DIR / "eval").glob("*.yaml")):
            cfg = validate_eval_config(compose("eval", overrides=[f"eval={preset}"]))
            assert cfg.eval.tasks and cfg.eval.seeds == [0]
        sane = validate_eval_config(compose("eval", overrides=["eval=GLUE_sane"])).eval
        assert (sane.lr, sane.batch_size, sane.epochs, sane.scheduler, sane.warmup) == (
            4e-5, 16, 5, "cosine", 0.1)
        glue = validate_eval_config(compose("eval", overrides=["eval=GLUE"])).eval
        assert (glue.lr, glue.batch_size) == (2e-5, 32)
        demo = validate_eval_config(compose("eval", overrides=["eval=demo"])).eval
        assert Path(demo.data_dir, "glue", "SST-2", "train.tsv").is_file()
        with pytest.raises(ConfigError, match="Unknown task 'nope'.*Allowed tasks"):
            validate_eval_config(compose("eval", overrides=["eval.tasks=[rte,nope]"]))
        with pytest.raises(ConfigError, match="eval.scheduler"):
            validate_eval_config(compose("eval", overrides=["eval.scheduler=triangle"]))
        with pytest.raises(ConfigError, match="lr_peak"):
            validate_eval_config(compose("eval", overrides=["+eval.lr_peak=1"]))


def test_missing_checkpoint_and_tokenizer_mismatch(base_dir, tmp_path, enwiki_files):
    cfg = eval_config()
    cfg.base_dir, cfg.name = str(base_dir), "never-pretrained"
    with pytest.raises(CheckpointError, match="never-pretrained"):
        load_checkpoint_for_eval(cfg)
    tokenizer = make_tokenizer(enwiki_files, vocab_size=500)
    small = build_model(tiny_arch(), vocab_size=len(tokenizer) - 100, pad_token_id=0)
    folder = tmp_path / "mismatch" / "pretrain" / STAMP / "model"
    save_model_folder(folder, small, tokenizer)
    cfg.base_dir, cfg.name = str(tmp_path), "mismatch"
    with pytest.raises(CheckpointError, match="[Tt]okenizer.*tokens but the model"):
        load_checkpoint_for_eval(cfg)
