"""Bad data input is refused in seconds with one line; data identity is kept across resumes.

Every refusal is asserted by its message and by its speed (it comes before any training:
no checkpoint, no metrics). Tokenizer training is checked byte for byte across builds and
processes, and a resume on changed data is refused unless ``resume_allow_data_change``.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cramming.backend.hooks import TrainingHook
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import DataConfig
from cramming.data import iter_documents, train_tokenizer
from cramming.errors import ConfigError, DataError
from cramming.evaluation.readers import read_split
from cramming.evaluation.tasks import get_task
from cramming.pretrain import run_pretraining

REPO_ROOT = Path(__file__).resolve().parents[1]
QUICK = 15.0  # seconds: a refusal must come long before any training would


def config(overrides: list[str], *extra: str):
    return load_pretrain_config(compose("pretrain", [*overrides, *extra]))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


def assert_nothing_trained(run_dir: Path) -> None:
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / "metrics.jsonl").exists()


def refuse(cfg, run_dir: Path, error: type, match: str) -> str:
    """Run ``cfg``; it must raise ``error`` matching ``match`` quickly, before training."""
    started = time.perf_counter()
    with pytest.raises(error, match=match) as caught:
        run_pretraining(cfg, run_dir)
    assert time.perf_counter() - started < QUICK
    assert_nothing_trained(run_dir)
    return one_line(caught)


# --------------------------------------------------------------------------- corpora


@pytest.fixture(scope="module")
def wiki_text(enwiki_files: list[Path]) -> str:
    return enwiki_files[0].read_text(encoding="utf-8")[:200_000]


@pytest.mark.parametrize("kind, match", [
    ("random", r"binary, not text"),
    ("gzip", r"gzip-compressed, not text: gunzip it first \(gunzip -k "),
    ("utf16", r"UTF-16 text: convert it to UTF-8 first: iconv -f UTF-16 -t UTF-8 "),
    ("latin1", r"not UTF-8 .* iconv -f LATIN1 -t UTF-8"),
])
def test_bad_corpus_is_refused_naming_the_file(kind, match, wiki_text, tiny_overrides,
                                               tmp_path):
    encoded = {"random": lambda: os.urandom(50_000),
               "gzip": lambda: gzip.compress(wiki_text.encode()),
               "utf16": lambda: wiki_text.encode("utf-16"),
               "latin1": lambda: wiki_text.replace("e", "é").encode("latin-1", "replace")}
    corpus = tmp_path / f"corpus.{kind}"
    corpus.write_bytes(encoded[kind]())
    cfg = config(tiny_overrides, "data=text", f"data.paths=[{corpus}]",
                 f"base_dir={tmp_path / 'out'}")
    message = refuse(cfg, tmp_path / "run", DataError, match)
    assert str(corpus) in message


def test_a_bad_file_among_good_ones_fails_before_reading_them(wiki_text, tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(3):
        (folder / f"a{i}.txt").write_text(wiki_text)
    (folder / "z.txt").write_bytes(gzip.compress(b"hello"))
    cfg = DataConfig(source="text", paths=[str(folder)])
    documents = iter_documents(cfg)
    with pytest.raises(DataError, match=r"z\.txt is gzip-compressed"):
        next(documents)  # the first document: every file was checked up front


def test_vocab_size_too_small_names_the_minimum(tiny_overrides, tmp_path):
    cfg = config(tiny_overrides, "data.vocab_size=10", f"base_dir={tmp_path / 'out'}")
    message = refuse(cfg, tmp_path / "run", DataError, r"data\.vocab_size=10 is too small")
    needed = int(message.split("at least ")[1].split(" ")[0])
    assert needed > 100  # the special tokens, letters, digits, punctuation and their ##-forms
    documents = list(iter_documents(cfg.data))[:200]
    tokenizer = train_tokenizer(documents, DataConfig(vocab_size=needed))  # the minimum works
    assert len(tokenizer) == needed
    with pytest.raises(DataError, match=r"vocab_size=10 is too small for a unigram"):
        train_tokenizer(documents, DataConfig(vocab_size=10, tokenizer="unigram"))
    with pytest.raises(ConfigError, match=r"data\.vocab_size=3 leaves no room"):
        config(tiny_overrides, "data.vocab_size=3")


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("override, match", [
    ("seed=-1", r"seed=-1 is out of range: use 0 <= seed < 2\*\*32"),
    (f"seed={2**32}", r"seed=4294967296 is out of range"),
    ("data.shuffle_seed=-5", r"data\.shuffle_seed=-5 is out of range"),
])
def test_seed_out_of_range_is_a_config_error(override, match, tiny_overrides):
    with pytest.raises(ConfigError, match=match) as caught:
        config(tiny_overrides, override)
    one_line(caught)


def test_unwritable_base_dir_is_refused_at_start(tiny_overrides, tmp_path):
    """A base_dir that cannot be created: below a regular file.

    Tests run as root, for whom a chmod-ed folder stays writable, so the check (which
    tries to create a file, not read permission bits) is exercised through a path that no
    user can create.
    """
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    cfg = config(tiny_overrides, f"base_dir={blocker / 'outputs'}")
    message = refuse(cfg, tmp_path / "run", ConfigError, r"base_dir=.* cannot be created")
    assert str(blocker) in message and "is a file, not a folder" in message


def test_full_disk_is_refused_at_start(tiny_overrides, tmp_path, monkeypatch):
    import cramming.config.checks as checks

    monkeypatch.setattr(checks.shutil, "disk_usage",
                        lambda path: type("Usage", (), {"free": 5 * 2**20})())
    cfg = config(tiny_overrides, f"base_dir={tmp_path / 'out'}")
    message = refuse(cfg, tmp_path / "run", ConfigError, r"is on a full disk: 5 MiB free")
    assert str(tmp_path) in message


def test_binary_task_file_is_refused_naming_it(tmp_path):
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_bytes(os.urandom(4000))
    with pytest.raises(DataError, match=r"Task file .*train\.tsv is binary") as caught:
        read_split(get_task("rte"), "train", str(tmp_path), "files")
    one_line(caught)
    (folder / "train.tsv").write_bytes("index\tsentence1\tsentence2\tlabel\n".encode("utf-16"))
    with pytest.raises(DataError, match=r"Task file .*train\.tsv is UTF-16"):
        read_split(get_task("rte"), "train", str(tmp_path), "files")


def cli(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "pretrain_bert.py", *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=timeout)
    return result, time.perf_counter() - started


def test_typo_in_a_key_lists_the_allowed_keys_via_the_real_cli(tmp_path):
    result, seconds = cli("budjet=10", f"base_dir={tmp_path}")
    assert result.returncode != 0
    assert seconds < 20  # the check runs before Hydra and before torch is imported
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "Unknown config key 'budjet' (did you mean 'budget'?)" in errors[0]
    assert "Allowed keys (top level): name, budget, budget_kind, seed, base_dir" in errors[0]
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir())  # Hydra made no run folder

    result, _ = cli("train.optim.lrr=1", f"base_dir={tmp_path}")
    assert result.returncode != 0 and "did you mean 'lr'?" in result.stderr
    assert "Allowed keys of train.optim: name, lr," in result.stderr


def test_unwritable_base_dir_via_the_real_cli(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result, seconds = cli(f"base_dir={blocker}/outputs")
    assert result.returncode != 0 and seconds < 20
    assert f"error: base_dir={blocker}/outputs cannot be created" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- identity

# documents per kind: enough for the unfixed trainers to differ between processes (BPE:
# merge order; Unigram: scores of dropped characters; WordPiece differed on larger corpora)
KINDS = {"wordpiece": 400, "bpe": 400, "unigram": None}
TOKENIZER_SCRIPT = """
import sys
from pathlib import Path
from cramming.config.schema import DataConfig
from cramming.data import iter_documents, train_tokenizer
corpus, out = sys.argv[1], Path(sys.argv[2])
for kind, documents in {kinds}.items():
    cfg = DataConfig(source="wikiextractor", paths=[corpus], tokenizer=kind, vocab_size=1500,
                     max_documents=documents)
    train_tokenizer(iter_documents(cfg), cfg).save_pretrained(out / kind)
"""


def tokenizer_bytes(folder: Path) -> bytes:
    return (folder / "tokenizer.json").read_bytes()


def test_tokenizer_training_is_byte_identical_across_builds_and_processes(enwiki_files,
                                                                          tmp_path):
    """Before the fix, BPE merge order and Unigram scores changed from process to process
    (hash-map order in the Rust trainers); the subprocess has another hash seed."""
    corpus = str(enwiki_files[0])
    child = subprocess.Popen(
        [sys.executable, "-c", TOKENIZER_SCRIPT.format(kinds=KINDS), corpus,
         str(tmp_path / "child")], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    for kind, documents in KINDS.items():
        cfg = DataConfig(source="wikiextractor", paths=[corpus], tokenizer=kind,
                         vocab_size=1500, max_documents=documents)
        for build in ("first", "second"):
            train_tokenizer(iter_documents(cfg), cfg).save_pretrained(tmp_path / build / kind)
        assert tokenizer_bytes(tmp_path / "first" / kind) == \
            tokenizer_bytes(tmp_path / "second" / kind), kind
        vocab = json.loads(tokenizer_bytes(tmp_path / "first" / kind))
        assert [t["content"] for t in vocab["added_tokens"]] == \
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # "##c" entries are not special
    assert child.wait(timeout=120) == 0, child.stderr.read()
    for kind in KINDS:
        assert tokenizer_bytes(tmp_path / "child" / kind) == \
            tokenizer_bytes(tmp_path / "first" / kind), kind


class CrashAfterStep(TrainingHook):
    """Simulates a crash right after optimizer step ``step`` (a checkpoint exists)."""

    name = "crash"

    def __init__(self, step: int):
        self.at = step

    def after_step(self, trainer, record: dict) -> None:
        if trainer.step == self.at:
            raise KeyboardInterrupt


def test_resume_on_changed_data_is_refused_unless_allowed(tiny_overrides, enwiki_files,
                                                          tmp_path):
    common = [*tiny_overrides, "budget=4", "train.checkpoint_every_steps=2"]
    run_dir = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_pretraining(config(common), run_dir, hooks=[CrashAfterStep(3)])  # saved at 2
    metrics = (run_dir / "metrics.jsonl").read_text()
    cases = [
        (["data.seq_length=32"], [r"seq_length 64 -> 32", r"data [0-9a-f]{12} -> [0-9a-f]{12}"]),
        (["seed=1"], [r"seed 0 -> 1"]),
        ([f"data.paths=[{enwiki_files[1]}]", "data.max_documents=200"],
         [r"corpus wikiextractor:\S+wiki_00 -> wikiextractor:\S+wiki_01",
          r"tokenizer [0-9a-f]{12} -> [0-9a-f]{12}"]),
    ]
    for overrides, expected in cases:
        started = time.perf_counter()
        with pytest.raises(DataError, match=r"^Data changed since the checkpoint: ") as caught:
            run_pretraining(config(common, "resume=true", *overrides), run_dir)
        assert time.perf_counter() - started < 30  # (may build a data cache first)
        message = one_line(caught)
        for pattern in expected:
            assert caught.match(pattern), message
        assert "resume_allow_data_change=true" in message
        assert (run_dir / "metrics.jsonl").read_text() == metrics  # nothing trained
    summary = run_pretraining(config(common, "resume=true", "seed=1",
                                     "resume_allow_data_change=true"), run_dir)
    assert summary["steps"] == 4
