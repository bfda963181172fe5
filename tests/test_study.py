"""The study command end to end: cells, fine-tuning, report, rerun, resume; and its statistics."""

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from cramming.errors import ConfigError
from cramming.study.plan import load_study_config, plan_cells, write_cell_configs
from cramming.study.stats import PAIRED, WELCH, difference, verdict

REPO = Path(__file__).resolve().parents[1]

TINY = ["study.methods=[baseline,stacking]", "study.budgets=[4]", "study.seeds=[0,1]",
        "eval.seeds=[0]", "eval.tasks=[rte]", "eval.max_train_examples=32",
        "eval.max_eval_examples=32", "eval.epochs=1", "study.validate_every_fraction=0.5",
        "study.pretrain=['arch=bert-small','data=demo','impl=cpu','train.batch_size=16',"
        "'impl.microbatch_size=16','train.checkpoint_every_steps=2','impl.progress_bar=false']"]


def run_study(base_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cramming.study", "name=tiny", f"base_dir={base_dir}",
               *TINY, *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def weights_digest(model_folder: Path) -> str:
    return hashlib.sha256((model_folder / "model.safetensors").read_bytes()).hexdigest()


def test_paired_interval_equals_scipys():
    rng = np.random.default_rng(0)
    method, baseline = rng.normal(80, 1, 5), rng.normal(79, 1, 5)
    diff = difference(dict(enumerate(method)), dict(enumerate(baseline)), 0.95)
    expected = stats.ttest_rel(method, baseline).confidence_interval(0.95)
    assert diff.test == PAIRED and diff.n_pairs == 5
    assert (diff.low, diff.high) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert diff.mean == pytest.approx(float(np.mean(method - baseline)), abs=1e-12)


def test_unpaired_seeds_get_welchs_interval():
    method = {0: 81.0, 1: 83.5, 2: 82.0}
    baseline = {3: 79.0, 4: 80.5, 5: 78.0, 6: 80.0}
    diff = difference(method, baseline, 0.9)
    expected = stats.ttest_ind(list(method.values()), list(baseline.values()),
                               equal_var=False).confidence_interval(0.9)
    assert diff.test == WELCH and diff.n_pairs == 0
    assert (diff.low, diff.high) == pytest.approx((expected.low, expected.high), abs=1e-12)
    assert verdict(diff) == "better" and verdict(diff, higher_is_better=False) == "worse"


def test_verdicts_read_the_interval():
    same = difference({0: 80.0, 1: 82.0, 2: 81.0}, {0: 81.0, 1: 81.0, 2: 81.5})
    assert same.low < 0 < same.high and verdict(same) == "no significant difference"
    assert verdict(difference({0: 70.0, 1: 71.0}, {0: 80.0, 1: 80.5})) == "worse"
    assert verdict(difference({0: 80.0}, {0: 79.0})) == "too few seeds for an interval"
    assert verdict(difference({}, {0: 79.0})) == "no scores"


def test_cell_files_compose_to_the_methods_settings(tmp_path):
    from cramming.config import compose, load_pretrain_config
    from cramming.study.run import compose_study

    study = compose_study(["name=s", f"base_dir={tmp_path}", "study=demo",
                           "study.methods=[baseline,stacking,lion,rho_loss]"])
    il_cells, cells = plan_cells(study.cfg)
    assert [c.key for c in il_cells] == ["il_model-b40-s0", "il_model-b40-s1"]  # once per seed
    assert len(cells) == 4 * 2 * 2
    folder = write_cell_configs(study.cfg, [*il_cells, *cells])
    common = [f"hydra.searchpath=['file://{folder}']", f"base_dir={tmp_path}",
              *study.cfg.study.pretrain]
    stacking = load_pretrain_config(compose("pretrain", [*common, "+study_cell=stacking-b40-s1"]))
    assert (stacking.name, stacking.seed, stacking.budget) == ("s/stacking-b40-s1", 1, 40)
    assert stacking.method.stacking.enabled and stacking.method.stacking.initial_layers == 1
    assert stacking.train.validate_every_fraction == 0.2 and stacking.arch.name == "bert-small"
    lion = load_pretrain_config(compose("pretrain", [*common, "+study_cell=lion-b40-s0"]))
    assert lion.train.optim.name == "lion" and not lion.method.stacking.enabled
    rho = load_pretrain_config(compose("pretrain", [*common, "+study_cell=rho_loss-b40-s1"]))
    assert rho.method.selection == "rho_loss"
    assert rho.method.rho_loss.il_losses == str(tmp_path / "s" / "il_losses" / "seed-1.npz")


def test_bad_study_settings_fail_in_one_line(tmp_path):
    from cramming.study.run import compose_study

    with pytest.raises(ConfigError, match="no definition for \\['nope'\\]"):
        compose_study(["name=s", f"base_dir={tmp_path}", "study.methods=[baseline,nope]"])
    with pytest.raises(ConfigError, match="did you mean 'budgets'"):
        compose_study(["name=s", "study.budgetz=[1]"])
    with pytest.raises(ConfigError, match="not in study.methods"):
        load_study_config({"study": {"methods": ["lion"], "baseline": "baseline",
                                     "method_overrides": {"lion": [], "baseline": []}}})
    result = subprocess.run([sys.executable, "-m", "cramming.study", "name=s",
                             f"base_dir={tmp_path}", "study.methods=[baseline,stacking]",
                             "study.method_overrides.stacking=['method=stacking']"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    # bert-small has 4 layers: stacking from 4 initial layers cannot grow; named per cell
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "study cell stacking-b40-s0" in errors[0], result.stderr


def test_tiny_study_end_to_end_rerun_and_resume(tmp_path):
    first = run_study(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    folder = tmp_path / "tiny"
    report = json.loads((folder / "report.json").read_text())
    cells = {c["key"]: c for c in report["cells"]}
    assert sorted(cells) == ["baseline-b4-s0", "baseline-b4-s1", "stacking-b4-s0",
                             "stacking-b4-s1"]
    for cell in cells.values():
        assert cell["steps"] == 4 and set(cell["scores"]) == {"0"} and cell["val_loss"] > 0
        assert Path(cell["run_folder"], "model", "model.safetensors").is_file()
    rows = {r["method"]: r for r in report["rows"]}
    assert rows["baseline"]["score"]["n"] == 2 and "vs_baseline" not in rows["baseline"]
    vs = rows["stacking"]["vs_baseline"]
    assert vs["score"]["test"] == PAIRED and vs["score"]["n_pairs"] == 2
    scores = {k: c["scores"]["0"] for k, c in cells.items()}
    assert vs["score"]["mean"] == pytest.approx(
        np.mean([scores["stacking-b4-s0"] - scores["baseline-b4-s0"],
                 scores["stacking-b4-s1"] - scores["baseline-b4-s1"]]))
    for png in report["plots"]:
        assert (folder / png).read_bytes()[:4] == b"\x89PNG"
    assert "| stacking | 4 |" in (folder / "report.md").read_text()

    # rerun: nothing is trained or fine-tuned again
    stamps = {p: p.stat().st_mtime_ns for p in folder.glob("*/*/*/metrics.jsonl")}
    results = {p: p.stat().st_mtime_ns for p in folder.glob("*/eval/*/results.json")}
    again = run_study(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 of 4 cells to run" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/*/*/metrics.jsonl")} == stamps
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/eval/*/results.json")} == results

    # a cell stopped after its step-2 checkpoint resumes there and ends with the same weights
    run_folder = Path(cells["stacking-b4-s1"]["run_folder"])
    finished = weights_digest(run_folder / "model")
    shutil.rmtree(run_folder / "model")
    (run_folder / "summary.json").unlink()
    for checkpoint in (run_folder / "checkpoints").glob("step-*"):
        if checkpoint.name != "step-000000002":
            shutil.rmtree(checkpoint)
    shutil.rmtree(run_folder.parents[1] / "eval")
    resumed = run_study(tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Pretraining: 1 of 4 cells to run" in resumed.stderr
    assert "Fine-tuning seed 0: 1 of 4 cells to run" in resumed.stderr
    assert weights_digest(run_folder / "model") == finished
    steps = [json.loads(line)["step"] for line in (run_folder / "metrics.jsonl").open()
             if '"loss"' in line and '"val_loss"' not in line]
    assert steps == sorted(set(steps)) and steps[-1] == 4  # continued, not restarted
