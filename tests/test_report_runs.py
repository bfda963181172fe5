"""The comparison report: evals tied to their exact run folder, settings never merged."""

import json
from pathlib import Path

from cramming.report import find_runs, markdown, plot, run_key

METHODS = {
    "none": {"name": "none", "stacking": {"enabled": False}, "layer_drop": {"enabled": False},
             "selection": "none"},
    "stacking": {"name": "stacking", "stacking": {"enabled": True},
                 "layer_drop": {"enabled": False}, "selection": "none"},
    "sb": {"name": "selective_backprop", "stacking": {"enabled": False},
           "layer_drop": {"enabled": True}, "selection": "selective_backprop"},
}


def pretrain_run(root: Path, name: str, stamp: str, method: str, optim: str, budget: float,
                 loss: float, seed: int = 0) -> Path:
    import yaml

    folder = root / name / "pretrain" / stamp
    (folder / "model").mkdir(parents=True)
    config = {"arch": {"name": "bert-tiny"}, "train": {"name": "bert-o4", "optim": {
        "name": optim}}, "method": METHODS[method], "budget": budget, "budget_kind": "steps",
        "seed": seed}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 10, "loss": loss}) + "\n")
    return folder


def eval_result(root: Path, name: str, stamp: str, model_folder: str, glue: dict,
                preset: str = "GLUE_sane") -> None:
    folder = root / name / "eval" / stamp
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({
        "name": name, "preset": preset, "model_folder": model_folder, "seeds": [0, 1],
        "averages": {"GLUE": glue}}))


def average(mean: float, tasks: list, missing: list, label: str) -> dict:
    return {"tasks": tasks, "missing": missing, "label": label,
            "last": {"mean": mean, "std": 1.0, "values": [mean - 1, mean + 1]}}


def test_evals_belong_to_their_run_folder_and_methods_never_share_a_line(tmp_path):
    # Two runs of one *name* with different methods, a third with another optimizer.
    plain = pretrain_run(tmp_path, "exp", "2024-01-01_00-00-00", "none", "adamw", 100, 5.0)
    stacked = pretrain_run(tmp_path, "exp", "2024-01-02_00-00-00", "stacking", "adamw", 100,
                           4.5)
    pretrain_run(tmp_path, "exp", "2024-01-03_00-00-00", "sb", "lion", 200, 4.0)
    pretrain_run(tmp_path, "exp", "2024-01-04_00-00-00", "none", "adamw", 200, 4.2)
    full = average(80.0, ["cola", "mnli"], [], "GLUE average")
    partial = average(70.0, ["mnli"], ["cola", "sst2"], "GLUE partial average (mnli only; "
                      "missing cola, sst2)")
    # The newest eval (of the stacking run) must not be attached to the plain run.
    eval_result(tmp_path, "exp", "2024-02-01_00-00-00", f"outputs/exp/pretrain/{plain.name}/model",
                full)
    eval_result(tmp_path, "exp", "2024-02-02_00-00-00", str(stacked / "model"), partial)
    rows = {row.folder.name: row for row in find_runs(tmp_path)}
    first, second, third, fourth = (rows[k] for k in sorted(rows))
    assert first.downstream == {("GLUE", "GLUE_sane"): "80.00 ± 1.00 (n=2) seeds [0, 1]"}
    assert "70.00" in second.downstream[("GLUE", "GLUE_sane")]
    assert "partial average (mnli only" in second.downstream[("GLUE", "GLUE_sane")]
    assert third.downstream == {} and fourth.downstream == {}
    assert (first.method, second.method, third.method) == ("none", "stacking",
                                                          "layer_drop+selective_backprop")
    assert (first.optimizer, third.optimizer) == ("adamw", "lion")
    assert len({r.setting for r in rows.values()}) == 3  # plain runs at 100 and 200 share one
    assert first.setting == fourth.setting and first.setting != second.setting
    table = markdown(list(rows.values()))
    assert table.count("| exp (") == 4 and "| stacking | adamw |" in table
    assert "GLUE avg, GLUE_sane (last epoch)" in table
    assert plot(list(rows.values()), tmp_path / "report.png").stat().st_size > 1000


def test_run_key_reads_relative_and_absolute_paths():
    assert run_key("outputs/a/pretrain/2024-01-01_00-00-00/model") == ("a", "2024-01-01_00-00-00")
    assert run_key("/x/b/pretrain/s1") == ("b", "s1")
    assert run_key("/x/b/model") is None and run_key("") is None


def test_evaluations_of_unknown_folders_are_reported_not_attached(tmp_path, capsys):
    from cramming.report import main

    pretrain_run(tmp_path, "exp", "2024-01-01_00-00-00", "none", "adamw", 100, 5.0)
    eval_result(tmp_path, "exp", "2024-02-01_00-00-00", "/elsewhere/model",
                average(80.0, ["cola"], [], "GLUE average"))
    assert main([str(tmp_path), "--png", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "80.00" not in out and "1 evaluation(s) not shown" in out
