"""Data preparation throughput: ``prepare_data`` vs a plain ``datasets.map`` + ``tokenizers``
pipeline doing the same work (WordPiece training, tokenization, packing into
``[CLS] + (L-1)``-token rows, shuffled train/val split written as numpy arrays).

Each repeat builds into a fresh cache folder; the two pipelines alternate. Reported per
pipeline: wall seconds, corpus MB/s (UTF-8 bytes of the documents used), packed sequences/s
and the cores actually used (process + child CPU seconds / wall seconds).

Usage, from the repo root::

    python -m bench.data_prep                          # 20000 enwiki documents, 3 repeats
    python -m bench.data_prep --max-documents 0        # the whole shared corpus
    python -m bench.data_prep --vocab 8192 --seq 256 --num-proc 1 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import finish, machine_info, print_table, summarize, usable_cores
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import DataConfig
from cramming.data import iter_documents, prepare_data

DEFAULT_CORPUS = Path(__file__).resolve().parents[1].parent / "shared/data/corpus/enwiki"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all threads) and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def data_config(args: argparse.Namespace) -> DataConfig:
    overrides = ["data=shared-enwiki", f"data.paths=[{args.corpus}]",
                 f"data.vocab_size={args.vocab}", f"data.seq_length={args.seq}",
                 f"data.num_proc={args.num_proc}"]
    if args.max_documents:
        overrides.append(f"data.max_documents={args.max_documents}")
    return load_pretrain_config(compose("pretrain", overrides)).data


def run_ours(cfg: DataConfig, folder: Path) -> int:
    """``prepare_data`` into an empty cache root; returns the packed row count."""
    prepared = prepare_data(cfg, cache_root=folder, progress=False)
    return len(prepared.train) + len(prepared.val)


def run_baseline(cfg: DataConfig, folder: Path, num_proc: int) -> int:
    """The same work the way a plain HF script does it (run_mlm.py's tokenize + group_texts)."""
    import datasets
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    datasets.disable_progress_bars()
    dataset = datasets.Dataset.from_dict({"text": list(iter_documents(cfg))})
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.NFKC(),
        normalizers.BertNormalizer(lowercase=cfg.lowercase, strip_accents=cfg.strip_accents)])
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=cfg.vocab_size, special_tokens=SPECIALS,
                                        show_progress=False)
    batches = (dataset[i:i + 1000]["text"] for i in range(0, len(dataset), 1000))
    tokenizer.train_from_iterator(batches, trainer=trainer, length=len(dataset))
    tokenizer.save(str(folder / "tokenizer.json"))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    width = cfg.seq_length - 1

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        encoded = tokenizer.encode_batch(batch["text"], add_special_tokens=False)
        return {"input_ids": [e.ids + [sep_id] for e in encoded]}

    def group_texts(batch: dict[str, list]) -> dict[str, list]:
        flat = [token for ids in batch["input_ids"] for token in ids]
        usable = len(flat) // width * width
        return {"input_ids": [[cls_id] + flat[i:i + width] for i in range(0, usable, width)]}

    workers = num_proc if num_proc > 1 else None
    tokens = dataset.map(tokenize, batched=True, num_proc=workers, remove_columns=["text"])
    packed = tokens.map(group_texts, batched=True, batch_size=1000, num_proc=workers)
    split = packed.train_test_split(test_size=cfg.val_fraction, seed=cfg.shuffle_seed)
    for name, part in (("train", split["train"]), ("val", split["test"])):
        ids = np.asarray(part.with_format("numpy")["input_ids"], dtype=np.uint16)
        np.save(folder / f"{name}_input_ids.npy", ids)
    return len(packed)


def measure(name: str, fn, folder: Path) -> dict[str, float]:
    folder.mkdir(parents=True)
    cpu_before, start = cpu_seconds(), time.perf_counter()
    rows = fn(folder)
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu_before
    print(f"  {name:<9} {wall:7.1f} s  {rows} rows  {cpu / wall:.2f} cores")
    return {"seconds": wall, "rows": rows, "cores_used": cpu / wall}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="WikiExtractor folder")
    parser.add_argument("--max-documents", type=int, default=20000, help="0: all")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--num-proc", type=int, default=0,
                        help="cores for both pipelines (0: all usable cores)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--label", default="")
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    info = machine_info()
    cores = args.num_proc or usable_cores()
    cfg = data_config(args)
    corpus_bytes = sum(len(doc.encode("utf-8")) for doc in iter_documents(cfg))
    print(f"corpus: {args.corpus}, {corpus_bytes / 1e6:.1f} MB of documents; "
          f"{cores} cores; vocab {args.vocab}; seq {args.seq}")
    runs: dict[str, list[dict[str, float]]] = {"prepare_data": [], "baseline": []}
    pipelines = {"prepare_data": lambda folder: run_ours(cfg, folder),
                 "baseline": lambda folder: run_baseline(cfg, folder, cores)}
    root = Path(tempfile.mkdtemp(prefix="bench-data-prep-"))
    try:
        for repeat in range(args.repeats):
            order = list(pipelines) if repeat % 2 == 0 else list(pipelines)[::-1]
            for name in order:
                runs[name].append(measure(name, pipelines[name], root / f"{name}-{repeat}"))
                shutil.rmtree(root / f"{name}-{repeat}", ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = []
    for name, samples in runs.items():
        seconds = summarize([s["seconds"] for s in samples])
        rows = samples[0]["rows"]
        results.append({"pipeline": name, "seconds": seconds, "rows": rows,
                        "mb_per_second": corpus_bytes / 1e6 / seconds["median"],
                        "sequences_per_second": rows / seconds["median"],
                        "cores_used": summarize([s["cores_used"] for s in samples])})
    base = results[1]["seconds"]["median"]
    for r in results:
        r["speedup_vs_baseline"] = base / r["seconds"]["median"]
    print_table([{"pipeline": r["pipeline"], "s": r["seconds"]["median"],
                  "spread": 100 * r["seconds"]["spread"], "mbs": r["mb_per_second"],
                  "sps": r["sequences_per_second"], "rows": r["rows"],
                  "cores": r["cores_used"]["median"], "x": r["speedup_vs_baseline"]}
                 for r in results],
                [("pipeline", "pipeline", ""), ("s", "seconds", ".1f"),
                 ("spread", "spread%", ".0f"), ("mbs", "MB/s", ".2f"),
                 ("sps", "seq/s", ".0f"), ("rows", "rows", "d"),
                 ("cores", "cores used", ".2f"), ("x", "vs baseline", ".2f")])
    return finish("data_prep", args, info, args.label, config=dataclasses.asdict(cfg),
                  corpus_mb=corpus_bytes / 1e6, cores_requested=cores, results=results,
                  rayon_threads_env=os.environ.get("RAYON_NUM_THREADS"))


if __name__ == "__main__":
    main()
