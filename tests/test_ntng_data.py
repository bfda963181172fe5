"""NTNG's data presets on local files in their hub formats (no internet here): BCWK as
Parquet with a `text` column, C4 as gzipped JSON lines; each trains 2 steps."""

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cramming.config import compose, load_pretrain_config
from cramming.pretrain import run_pretraining

TINY = ["arch=bert-tiny", "data.vocab_size=300", "data.seq_length=16", "data.val_fraction=0.1",
        "data.tokenizer_train_documents=null", "impl=cpu", "impl.microbatch_size=4",
        "impl.progress_bar=false", "train.batch_size=4", "train.batch_size_ramp=0",
        "budget_kind=steps", "budget=2", "train.validate_at_end=false"]


def texts(enwiki_files, count: int) -> list[str]:
    """Real sentences from the shared Wikipedia sample."""
    lines = [line.strip() for line in enwiki_files[0].read_text().splitlines()
             if len(line.strip()) > 80 and not line.startswith("<")]
    assert len(lines) >= count
    return lines[:count]


@pytest.mark.parametrize("preset", ["bookcorpus-wikitext", "c4-subset-random"])
def test_ntng_data_presets_train_on_local_files_in_hub_format(preset, enwiki_files, tmp_path):
    rows = texts(enwiki_files, 120)
    if preset == "bookcorpus-wikitext":  # BookCorpus and Wikipedia Parquet shards
        files = [tmp_path / "bookcorpus.parquet", tmp_path / "wikipedia.parquet"]
        pq.write_table(pa.table({"text": rows[:60]}), files[0])
        pq.write_table(pa.table({"id": [str(i) for i in range(60)], "url": ["u"] * 60,
                                 "title": ["t"] * 60, "text": rows[60:]}), files[1])
        local = [f"data.hf_data_files=[{files[0]},{files[1]}]"]
    else:  # C4's en/c4-train.*.json.gz: text, timestamp, url per line
        path = tmp_path / "c4-train.00000-of-01024.json.gz"
        with gzip.open(path, "wt") as handle:
            for text in rows:
                handle.write(json.dumps({"text": text, "timestamp": "2019-04-25T12:57:54Z",
                                         "url": "https://example.org"}) + "\n")
        local = ["data.hf_name=json", "data.hf_config=null", f"data.hf_data_files=[{path}]"]
    cfg = load_pretrain_config(compose("pretrain", [f"data={preset}", *local, *TINY,
                                                    f"base_dir={tmp_path / 'runs'}"]))
    assert cfg.data.name == preset and cfg.data.source == "hf"
    summary = run_pretraining(cfg, tmp_path / "run")
    assert summary["steps"] == 2
