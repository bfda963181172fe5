"""Encodings keep every field; per-task warmup; leaderboard files; suite averages."""

import json

import pytest

from cramming.config.schema import DataConfig
from cramming.data import iter_documents, train_tokenizer
from cramming.evaluation.config import EvalSettings
from cramming.evaluation.encoding import FieldEncoder, collate, encode_examples, fit_lengths
from cramming.evaluation.finetune import lr_multiplier, plan_steps
from cramming.evaluation.readers import read_split
from cramming.evaluation.results import average_entries, suite_averages
from cramming.evaluation.submission import write_predictions
from cramming.evaluation.tasks import get_task


def make_tokenizer(enwiki_files, vocab_size=3000):
    cfg = DataConfig(paths=[str(f) for f in enwiki_files], vocab_size=vocab_size,
                     tokenizer_train_documents=400)
    return train_tokenizer(iter_documents(cfg), cfg)


@pytest.fixture(scope="module")
def tokenizer(enwiki_files):
    return make_tokenizer(enwiki_files)


def _decoded(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


def test_multi_field_tasks_encode_every_field(tokenizer, shared_data):
    data = str(shared_data)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for name, fields in [("copa", 3), ("wic", 3), ("multirc", 3), ("wsc", 1), ("cb", 2),
                         ("boolq", 2), ("sst2", 1)]:
        task = get_task(name)
        examples = read_split(task, "validation", data, "files").examples[:20]
        instances = encode_examples(task, examples, tokenizer, 512)
        for example, instance in zip(examples, instances):
            for s, ids in enumerate(instance.input_ids):
                assert ids[0] == cls and ids.count(sep) == fields, name
                text = _decoded(tokenizer, ids)
                texts = example["texts"] + ([example["choices"][s]] if "choices" in example else [])
                for field in texts:  # every word of every field is in the decoded sequence
                    for word in tokenizer.backend_tokenizer.normalizer.normalize_str(
                            field).split()[:5]:
                        assert tokenizer.decode(tokenizer(word, add_special_tokens=False)
                                                ["input_ids"]) in text, (name, word)
    # COPA: one sequence per choice
    copa = encode_examples(get_task("copa"), read_split(get_task("copa"), "validation", data,
                                                        "files").examples[:3], tokenizer, 128)
    assert all(len(i.input_ids) == 2 for i in copa)


def test_spans_point_at_the_marked_words(tokenizer, shared_data):
    wic = get_task("wic")
    examples = read_split(wic, "validation", str(shared_data), "files").examples[:30]
    for example, instance in zip(examples, encode_examples(wic, examples, tokenizer, 128)):
        (start1, end1), (start2, end2) = instance.spans[0]
        ids = instance.input_ids[0]
        _, a, b = example["spans"][0]
        assert _decoded(tokenizer, ids[start1:end1]).replace(" ", "") == \
            example["texts"][1][a:b].lower().replace(" ", "")
        assert end2 > start2 > end1
    batch = collate(encode_examples(wic, examples[:4], tokenizer, 128), tokenizer.pad_token_id)
    assert batch.span_weights.shape[:2] == (4, 2)
    assert batch.span_weights.sum(-1).allclose(batch.span_weights.new_ones(4, 2))


def test_truncation_is_longest_first_and_keeps_all_fields(tokenizer):
    assert fit_lengths([300, 10, 5], 100) == [85, 10, 5]
    assert fit_lengths([60, 60], 101) == [51, 50]
    encoder = FieldEncoder(tokenizer, 32)
    ids, types, _ = encoder.encode(["word " * 200, "short question", "an answer"])
    assert len(ids) == 32 and ids.count(tokenizer.sep_token_id) == 3
    assert types[0] == 0 and types[-1] == 1


def test_warmup_is_a_fraction_of_each_tasks_steps():
    settings = EvalSettings(batch_size=16, epochs=5, warmup=0.1, scheduler="cosine",
                            drop_last=False)
    small, large = plan_steps(250, settings), plan_steps(2490, settings)
    assert (small.total_steps, small.warmup_steps) == (80, 8)
    assert (large.total_steps, large.warmup_steps) == (780, 78)
    for plan in (small, large):
        factors = [lr_multiplier(s, plan, "cosine") for s in range(plan.total_steps)]
        assert max(factors) == pytest.approx(1.0)
        assert factors.index(max(factors)) == plan.warmup_steps - 1  # peak ends the warmup
        assert factors[0] < 0.2 and factors[-1] < 0.01
    absolute = plan_steps(250, EvalSettings(warmup=20, epochs=5))
    assert absolute.warmup_steps == 20
    linear = plan_steps(100, EvalSettings(batch_size=10, epochs=1, warmup=0))
    assert [lr_multiplier(s, linear, "linear") for s in (0, 5)] == [1.0, 0.5]


def test_submission_formats(tmp_path, shared_data):
    rte = get_task("rte")
    examples = read_split(rte, "test", str(shared_data), "files").examples[:3]
    path = write_predictions(rte, "", examples, [0, 1, 0], tmp_path)
    assert path.name == "RTE.tsv"
    assert path.read_text().splitlines() == [
        "index\tprediction", "0\tentailment", "1\tnot_entailment", "2\tentailment"]
    boolq = get_task("boolq")
    path = write_predictions(boolq, "", [{"idx": 5}], [1], tmp_path)
    assert json.loads(path.read_text()) == {"idx": 5, "label": "true"}
    multirc = get_task("multirc")
    answers = [{"idx": (0, 0, 0)}, {"idx": (0, 0, 1)}, {"idx": (0, 1, 2)}]
    record = json.loads(write_predictions(multirc, "", answers, [1, 0, 1], tmp_path).read_text())
    assert record["passage"]["questions"][0]["answers"] == [{"idx": 0, "label": 1},
                                                            {"idx": 1, "label": 0}]


def test_suite_average_as_cramming_reports_it():
    mnli, cb, cola = get_task("mnli"), get_task("cb"), get_task("cola")
    assert average_entries(mnli, {"accuracy_m": 80.0, "accuracy_mm": 70.0}) == [80.0, 70.0]
    assert average_entries(cb, {"accuracy": 90.0, "f1_macro": 70.0}) == [80.0]
    results = {"mnli": {"status": "ok", "seeds": {"0": {"last": {"accuracy_m": 80.0,
                                                                 "accuracy_mm": 70.0}}}},
               "cola": {"status": "ok", "seeds": {"0": {"last": {"mcc": 30.0}}}},
               "cb": {"status": "ok", "seeds": {"0": {"last": {"accuracy": 90.0,
                                                               "f1_macro": 70.0}}}}}
    for entry in results.values():
        entry["seeds"]["0"]["best"] = entry["seeds"]["0"]["last"]
    averages = suite_averages([mnli, cola, cb, get_task("qqp")], results, [0])
    assert averages["GLUE"]["last"]["mean"] == pytest.approx(60.0)  # (80 + 70 + 30) / 3
    # missing is against the whole GLUE average (WNLI is not in it), not the requested tasks
    assert averages["GLUE"]["missing"] == ["sst2", "mrpc", "qqp", "stsb", "qnli", "rte"]
    assert averages["SuperGLUE"]["last"]["mean"] == pytest.approx(80.0)
