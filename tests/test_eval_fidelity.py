"""Evaluation fidelity: AX-g pairing, AX layouts, exit codes, Cramming's GLUE_sane recipe."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cramming.errors import CheckpointError
from cramming.evaluation import run_evaluation
from cramming.evaluation.readers import TaskUnavailable, read_split
from cramming.evaluation.scoring import compute_metrics
from cramming.evaluation.tasks import get_task


def write_axg(folder: Path, pairs: int) -> Path:
    """A file shaped like the official AX-g.jsonl: every row has its own pair_id."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(pairs):
        for pronoun in ("he", "she"):
            rows.append({"hypothesis": f"The worker {k} was tired.",
                         "idx": len(rows), "label": "entailment" if k % 2 else "not_entailment",
                         "pair_id": 550000 + len(rows),
                         "premise": f"The worker {k} said {pronoun} was tired."})
    path = folder / "AX-g.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_axg_parity_pairs_consecutive_rows(tmp_path):
    write_axg(tmp_path / "superglue" / "AX-g", pairs=400)
    task = get_task("axg")
    split = read_split(task, "validation", str(tmp_path), "files")
    assert len(split.examples) == 800
    agree = [k // 2 % 2 for k in range(800)]  # both rows of a pair predicted alike
    assert compute_metrics(task, split.examples, agree)["gender_parity"] == 1.0
    flipped = [k % 2 for k in range(800)]  # every pair disagrees
    assert compute_metrics(task, split.examples, flipped)["gender_parity"] == 0.0
    random = np.random.default_rng(0).integers(0, 2, 800).tolist()
    parity = compute_metrics(task, split.examples, random)["gender_parity"]
    assert 0.44 < parity < 0.56, parity
    # A subsample keeps file positions: only complete pairs are counted.
    kept = [e for e in split.examples if e["row"] not in (1, 2)]
    preds = [0 if e["row"] < 6 else e["row"] % 2 for e in kept]
    assert compute_metrics(task, kept, preds)["gender_parity"] == pytest.approx(1 / 398)


def glue_ax_full(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    header = "Lexical Semantics\tPredicate-Argument Structure\tLogic\tKnowledge\tDomain\t" \
             "Premise\tHypothesis\tLabel\n"
    rows = ["\t\tNegation\t\tArtificial\tThe cat sat.\tThe cat did not sit.\tcontradiction\n",
            "\t\t\t\tArtificial\tThe cat sat.\tA cat sat.\tentailment\n"]
    (folder / "diagnostic-full.tsv").write_text(header + "".join(rows))
    (folder / "AX.tsv").write_text("index\tsentence1\tsentence2\n0\tThe cat sat.\tA cat sat.\n")


@pytest.mark.parametrize("layout", ["diagnostic", "AX"])
def test_glue_ax_found_under_both_layouts(tmp_path, layout):
    glue_ax_full(tmp_path / "glue" / layout)
    task = get_task("ax")
    labelled = read_split(task, "validation", str(tmp_path), "files")
    assert [e["label"] for e in labelled.examples] == [2, 0]
    assert Path(labelled.source).parent.name == layout
    if layout == "AX":
        assert read_split(task, "test", str(tmp_path), "files").rows == 1


def test_skip_message_names_every_path_tried(tmp_path):
    with pytest.raises(TaskUnavailable) as caught:
        read_split(get_task("ax"), "validation", str(tmp_path), "files")
    message = str(caught.value)
    assert str(tmp_path / "diagnostic" / "diagnostic-full.tsv") in message or \
        str(tmp_path / "glue" / "diagnostic" / "diagnostic-full.tsv") in message
    assert "AX" + "/diagnostic-full.tsv" in message.replace("\\", "/")


# --------------------------------------------------------------------------- partial runs

REPO = Path(__file__).resolve().parents[1]
STAMP = "2024-01-01_00-00-00"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, enwiki_files):
    """(base_dir, model, tokenizer): one saved, randomly initialised bert-tiny run."""
    from omegaconf import OmegaConf

    from cramming.architectures import build_model
    from cramming.backend.checkpoint import save_model_folder
    from cramming.config import CONFIG_DIR, to_typed
    from cramming.config.schema import ArchConfig
    from tests.test_eval_encoding import make_tokenizer

    root = tmp_path_factory.mktemp("outputs")
    tokenizer = make_tokenizer(enwiki_files, vocab_size=800)
    torch.manual_seed(0)
    arch = to_typed(OmegaConf.load(CONFIG_DIR / "arch" / "bert-tiny.yaml"), ArchConfig)
    model = build_model(arch, vocab_size=len(tokenizer), pad_token_id=0)
    save_model_folder(root / "tiny" / "pretrain" / STAMP / "model", model, tokenizer,
                      {"arch": {"name": "bert-tiny"}})
    return root, model, tokenizer


def eval_config(**settings):
    from omegaconf import OmegaConf

    from cramming.config import CONFIG_DIR
    from cramming.evaluation import validate_eval_config

    base = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "eval" / "GLUE_sane.yaml"))
    base.update(settings)
    return validate_eval_config(OmegaConf.create(
        {"name": "tiny", "eval": base,
         "impl": {"device": "cpu", "threads": 1, "progress_bar": False}}))


def test_eval_py_fails_when_every_task_is_skipped(tiny_run, tmp_path):
    base_dir, _, _ = tiny_run
    command = [sys.executable, str(REPO / "eval.py"), "name=tiny", f"base_dir={base_dir}",
               "eval.tasks=[rte,cb]", f"eval.data_dir={tmp_path}", "eval.source=files",
               "impl.device=cpu", "impl.threads=1", "impl.progress_bar=false"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert "Nothing was evaluated" in output
    assert str(tmp_path / "RTE" / "train.tsv") in output or "RTE/train.tsv" in output
    assert "CB/train.jsonl" in output


def test_partial_suite_and_subsampled_dev_are_labelled(tiny_run, shared_data, tmp_path):
    _, model, tokenizer = tiny_run
    cfg = eval_config(tasks=["rte"], data_dir=str(shared_data), source="files", epochs=1,
                      max_train_examples=32, max_eval_examples=40, predict_test=False)
    results = run_evaluation(cfg, tmp_path, model, tokenizer)
    glue = results["averages"]["GLUE"]
    assert glue["tasks"] == ["rte"] and "mnli" in glue["missing"] and "wnli" not in glue["missing"]
    assert glue["label"].startswith("GLUE partial average (rte only; missing cola, sst2, ")
    assert "subsampled dev: rte" in glue["label"]
    assert results["tasks"]["rte"]["subsampled"] == {"train": {"used": 32, "of": 2490},
                                                     "validation": {"used": 40, "of": 277}}
    table = (tmp_path / "results.md").read_text()
    assert glue["label"] in table and "validation subsampled: 40 of 277" in table


# --------------------------------------------------------------------------- GLUE_sane


def cramming_classifier(folder: Path, **settings):
    """Our TaskModel built as GLUE_sane builds it, holding the reference classifier weights."""
    from cramming.architectures import build_model
    from cramming.architectures.ports import cramming_arch, port_cramming_state_dict
    from cramming.evaluation.heads import TaskModel, load_cramming_head

    config = json.loads((folder / "config.json").read_text())
    arch = cramming_arch(config)
    encoder = build_model(arch, vocab_size=config["embedding"]["vocab_size"],
                          pad_token_id=config["embedding"]["pad_token_id"])
    ported = port_cramming_state_dict(load_file(folder / "weights.safetensors"), arch)
    encoder.load_state_dict(ported.model, strict=True)
    sane = eval_config(**settings).eval
    model = TaskModel(encoder, config["num_labels"], 0, sane.classifier_dropout,
                      pooler=sane.pooler, head_dim=sane.head_dim)
    load_cramming_head(model, ported.extra)
    return model.eval()


def test_glue_sane_head_matches_crammings_classifier(shared_reference):
    folder = shared_reference / "cramming-classifier-tiny"
    model = cramming_classifier(folder)
    io = load_file(folder / "io.safetensors")
    assert (io["attention_mask"] == 0).any()  # the fixture pads: the mask must be honoured
    with torch.no_grad():
        logits = model(io["input_ids"], io["attention_mask"])
    torch.testing.assert_close(logits, io["logits"], atol=1e-5, rtol=0)
    # Another pooler or a head of the encoder's width cannot hold these weights.
    with pytest.raises(CheckpointError, match="head_dim"):
        cramming_classifier(folder, head_dim=None)
    avg = cramming_classifier(folder, pooler="avg")
    with torch.no_grad():
        assert not torch.allclose(avg(io["input_ids"], io["attention_mask"]), io["logits"],
                                  atol=1e-3)


def test_glue_sane_recipe_is_crammings():
    sane = eval_config().eval
    assert (sane.lr, sane.batch_size, sane.epochs, sane.scheduler, sane.warmup) == (
        4e-5, 16, 5, "cosine", 0.1)
    assert (sane.eps, sane.weight_decay, sane.betas) == (1e-6, 0.0, [0.9, 0.98])
    assert (sane.encoder_dropout, sane.classifier_dropout, sane.pooler, sane.head_dim) == (
        0.1, 0.1, "zero_index", 1024)
    assert sane.drop_last and sane.empty_second_segment and not sane.warmup_from_first_task


def test_drop_last_and_first_task_warmup():
    from cramming.evaluation.finetune import first_task_warmup, plan_steps

    sane = eval_config().eval
    plan = plan_steps(2490, sane)  # RTE: 155 full batches of 16, the last 10 rows dropped
    assert (plan.steps_per_epoch, plan.total_steps, plan.warmup_steps) == (155, 775, 78)
    cola = first_task_warmup(8551, sane)  # CoLA first: int(0.1 * 534 * 5)
    assert cola == 267
    rte = plan_steps(2490, sane, cola)
    assert rte.warmup_steps == 267 and rte.warmup_steps / rte.total_steps == pytest.approx(
        0.3445, abs=1e-3)  # the "RTE gets 34% warmup"
    keep = eval_config(drop_last=False).eval
    assert plan_steps(2490, keep).steps_per_epoch == 156


def test_single_sentences_get_crammings_second_separator(enwiki_files):
    from cramming.evaluation.encoding import FieldEncoder
    from tests.test_eval_encoding import make_tokenizer

    tokenizer = make_tokenizer(enwiki_files, vocab_size=800)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    cramming = FieldEncoder(tokenizer, 16, empty_second_segment=True)
    ids, types, _ = cramming.encode(["the history of the world and its many long stories"])
    assert len(ids) == 16 and ids[0] == cls and ids[-2:] == [sep, sep] and types[-1] == 1
    pair, _, _ = cramming.encode(["a b", "c d"])
    assert pair.count(sep) == 2  # pairs are unchanged
    plain, _, _ = FieldEncoder(tokenizer, 16).encode(["the history"])
    assert plain.count(sep) == 1


# --------------------------------------------------------------------------- presets


def preset(name: str):
    from hydra import compose, initialize_config_dir

    from cramming.config import CONFIG_DIR
    from cramming.evaluation import validate_eval_config

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return validate_eval_config(compose("eval", overrides=[f"eval={name}"])).eval


def test_presets_say_what_they_are():
    glue = preset("GLUE")  # Cramming's GLUE recipe
    assert (glue.lr, glue.weight_decay, glue.batch_size, glue.epochs, glue.scheduler,
            glue.warmup, glue.pooler, glue.eps) == (2e-5, 0.1, 32, 10, "linear", 0.06, "avg", 1e-6)
    ntng = preset("SuperGLUE_ntng")
    assert (ntng.lr, ntng.epochs, ntng.batch_size, ntng.average) == (5e-5, 10, 16, "ntng")
    assert "record" not in ntng.tasks and len(ntng.tasks) == 7
    board = preset("SuperGLUE")
    assert "record" in board.tasks and board.average == "standard"


def test_ntng_average_is_ntngs_and_not_partial_without_record():
    from cramming.evaluation.results import suite_averages

    names = ["boolq", "cb", "copa", "multirc", "rte_sg", "wic", "wsc"]
    scores = {"boolq": {"accuracy": 70.0}, "cb": {"accuracy": 80.0, "f1_macro": 60.0},
              "copa": {"accuracy": 55.0}, "multirc": {"em": 10.0, "f1a": 50.0},
              "rte_sg": {"accuracy": 60.0}, "wic": {"accuracy": 65.0}, "wsc": {"accuracy": 63.0}}
    results = {n: {"status": "ok", "seeds": {"0": {"last": s, "best": s}}}
               for n, s in scores.items()}
    tasks = [get_task(n) for n in names]
    ntng = suite_averages(tasks, results, [0], "ntng")["SuperGLUE"]
    assert ntng["missing"] == [] and "partial" not in ntng["label"] and "NTNG" in ntng["label"]
    assert ntng["last"]["mean"] == pytest.approx((70 + 60 + 55 + 50 + 60 + 65 + 63) / 7)
    board = suite_averages(tasks, results, [0])["SuperGLUE"]
    assert board["missing"] == ["record"] and "partial" in board["label"]
    assert board["last"]["mean"] == pytest.approx((70 + 70 + 55 + 30 + 60 + 65 + 63) / 7)


def test_encoder_dropout_reaches_every_dropout(tiny_run):
    import copy

    from cramming.evaluation.heads import set_encoder_dropout

    _, model, _ = tiny_run
    encoder = copy.deepcopy(model)
    set_encoder_dropout(encoder, 0.1)
    rates = [m.p for m in encoder.modules() if isinstance(m, torch.nn.Dropout)]
    attention = [m.attention_dropout for m in encoder.modules()
                 if isinstance(getattr(m, "attention_dropout", None), float)]
    assert rates and attention and set(rates) == set(attention) == {0.1}
    ids = torch.randint(5, 500, (2, 16))
    encoder.train()
    assert not torch.allclose(encoder.encode(ids), encoder.encode(ids))
    encoder.eval()
    torch.testing.assert_close(encoder.encode(ids), encoder.encode(ids))
