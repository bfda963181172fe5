"""Held-out MLM loss after the same wall-clock budget: our crammed encoder vs HF BERT.

Both models go through the real path, ``run_pretraining`` with ``budget_kind=hours``, on the
shared enwiki corpus (one data cache for both), with the same recipe (bert-o4 schedules,
batch, masking, seed, so the same rows and masks in the same order) and the same shape
(layers, hidden, heads, vocabulary, sequence length). At the end each model is scored by
``evaluate_mlm`` on the same validation rows with the same fixed masks (rate 0.15, seed 0).
Runs alternate model by model; ``--seeds`` repeats the pair.

Usage, from the repo root::

    python -m bench.quality_at_budget                       # 3 minutes per model
    python -m bench.quality_at_budget --minutes 10 --seeds 0 1 --max-documents 0
    python -m bench.quality_at_budget --layers 2 --hidden 128 --heads 2 --intermediate 256 \\
        --vocab 8192 --batch 64 --microbatch 32 --minutes 2 --ours train.optim.lr=2e-3
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path
from typing import Any

from bench.common import finish, machine_info, print_table, summarize
from cramming.config import compose, load_pretrain_config
from cramming.pretrain import run_pretraining

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = REPO.parent / "shared/data/corpus/enwiki"
BASE_ARCH = {"crammed": "crammed-bert", "crammed-mlp": "crammed-bert", "hf-bert": "hf-bert-base"}


def overrides_for(kind: str, args: argparse.Namespace, seed: int) -> list[str]:
    """Hydra overrides of one run: shared data / recipe / shape, per-model structure."""
    width = args.intermediate if kind == "crammed" else (args.hf_intermediate
                                                         or 2 * args.intermediate)
    overrides = [
        f"name=bench-quality-{kind}-s{seed}", f"base_dir={args.base_dir}", f"seed={seed}",
        "budget_kind=hours", f"budget={args.minutes / 60}",
        f"arch={BASE_ARCH[kind]}", f"arch.num_layers={args.layers}",
        f"arch.hidden_size={args.hidden}", f"arch.num_heads={args.heads}",
        f"arch.intermediate_size={width}", f"arch.max_seq_length={args.seq}",
        f"arch.dropout={args.dropout}", f"arch.attention_dropout={args.dropout}",
        "data=shared-enwiki", f"data.paths=[{args.corpus}]", f"data.vocab_size={args.vocab}",
        f"data.seq_length={args.seq}",
        f"train.batch_size={args.batch}", f"train.val_rows={args.val_batches * args.microbatch}",
        f"impl.microbatch_size={args.microbatch}", "impl.progress_bar=false",
    ]
    if args.max_documents:
        overrides.append(f"data.max_documents={args.max_documents}")
    if kind == "crammed-mlp":
        overrides.append("arch.ffn=mlp")
    return overrides + args.common + (args.hf if kind == "hf-bert" else args.ours)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--minutes", type=float, default=3.0, help="budget per model")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=512, help="our GLU branch width")
    parser.add_argument("--hf-intermediate", type=int, default=None, help="default 2x")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=16384)
    parser.add_argument("--batch", type=int, default=64, help="train.batch_size (sequences)")
    parser.add_argument("--microbatch", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.0, help="both models")
    parser.add_argument("--val-batches", type=int, default=20,
                        help="validation batches of --microbatch rows")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    parser.add_argument("--max-documents", type=int, default=20000, help="0: whole corpus")
    parser.add_argument("--models", default="crammed,hf-bert")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--base-dir", default=str(REPO / "outputs" / "bench"),
                        help="runs and the data cache go here")
    parser.add_argument("--keep-runs", action="store_true", help="keep run folders")
    parser.add_argument("--common", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--hf", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--label", default="")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if set(args.models) - set(BASE_ARCH):
        parser.error(f"--models must be from {list(BASE_ARCH)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    info = machine_info()
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in args.models}
    for index, seed in enumerate(args.seeds):
        order = args.models if index % 2 == 0 else args.models[::-1]
        for kind in order:
            overrides = overrides_for(kind, args, seed)
            cfg = load_pretrain_config(compose("pretrain", overrides))
            run_dir = Path(args.base_dir) / "quality" / f"{kind}-s{seed}-{time.strftime('%H%M%S')}"
            print(f"== {kind} seed {seed}: {args.minutes} min in {run_dir}", flush=True)
            summary = run_pretraining(cfg, run_dir)
            summary["overrides"] = overrides
            summary["tokens_per_second"] = summary["tokens"] / max(summary["budget_spent"]
                                                                   * 3600, 1e-9)
            runs[kind].append(summary)
            print(f"   steps {summary['steps']}, tokens {summary['tokens']}, "
                  f"val loss {summary.get('val_loss', float('nan')):.4f}", flush=True)
            if not args.keep_runs:
                shutil.rmtree(run_dir, ignore_errors=True)
    results = []
    for kind, summaries in runs.items():
        results.append({
            "model": kind,
            "val_loss": summarize([s["val_loss"] for s in summaries]),
            "val_accuracy": summarize([s["val_accuracy"] for s in summaries]),
            "steps": summarize([s["steps"] for s in summaries]),
            "tokens": summarize([s["tokens"] for s in summaries]),
            "tokens_per_second": summarize([s["tokens_per_second"] for s in summaries]),
            "runs": summaries,
        })
    print(f"\nbudget {args.minutes} min per model, {len(args.seeds)} seed(s); held-out MLM "
          "loss on the same rows and masks (rate 0.15, seed 0)")
    print_table([{"model": r["model"], "loss": r["val_loss"]["median"],
                  "acc": 100 * r["val_accuracy"]["median"], "steps": r["steps"]["median"],
                  "tokens": r["tokens"]["median"] / 1e3,
                  "tps": r["tokens_per_second"]["median"]} for r in results],
                [("model", "model", ""), ("loss", "val loss", ".4f"), ("acc", "val acc%", ".2f"),
                 ("steps", "steps", ".0f"), ("tokens", "k tokens", ".1f"),
                 ("tps", "tokens/s", ".1f")])
    return finish("quality_at_budget", args, info, args.label, results=results)


if __name__ == "__main__":
    main()
