"""Fine-tuning throughput (examples/s): our encoder + task head vs HF BertForSequenceClassification.

Ours runs the evaluation package's real loop, ``cramming.evaluation.finetune.finetune``
(TaskModel = encoder + pooler + linear head, CE, AdamW, warmup/cosine schedule, one epoch
per timed block). HF runs a plain PyTorch loop (same batches from the same ``collate``,
AdamW, same schedule); HF ``Trainer`` is measured too when ``accelerate`` is installed.
The examples are synthetic single-sentence classification instances of random length
(``--min-len`` .. ``--seq`` tokens, padded per batch), so every model pads identically.
Models alternate block by block (order flipped each repeat); median and spread reported.

Usage, from the repo root::

    python -m bench.eval_throughput                     # reduced size, ~2 minutes
    python -m bench.eval_throughput --full --examples 64 --repeats 3
    python -m bench.eval_throughput --layers 2 --hidden 128 --heads 2 --intermediate 256 \\
        --vocab 8192 --seq 64 --batch 32 --examples 256
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from bench.common import fill_defaults, finish, machine_info, print_table, summarize
from cramming.architectures import build_model
from cramming.architectures.hf_bert import bert_config
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import ArchConfig
from cramming.evaluation.config import EvalSettings
from cramming.evaluation.encoding import Instance, collate
from cramming.evaluation.finetune import finetune, lr_multiplier, plan_steps
from cramming.evaluation.heads import TaskModel
from cramming.evaluation.tasks import get_task

REDUCED = dict(layers=4, hidden=512, heads=8, intermediate=1024, seq=128, vocab=32768,
               batch=16)
FULL = dict(layers=16, hidden=768, heads=12, intermediate=1536, seq=128, vocab=32768,
            batch=16)
CLS_ID, SEP_ID = 2, 3


def synthetic_instances(count: int, min_len: int, max_len: int, vocab: int,
                        seed: int) -> list[Instance]:
    """``[CLS] tokens [SEP]`` sequences of random length with random binary labels."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (count,), generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    instances = []
    for index, (length, label) in enumerate(zip(lengths.tolist(), labels.tolist())):
        body = torch.randint(5, vocab, (length - 2,), generator=generator).tolist()
        ids = [CLS_ID, *body, SEP_ID]
        instances.append(Instance([ids], [[0] * len(ids)], [[]], label, index))
    return instances


def arch_for(kind: str, args: argparse.Namespace) -> ArchConfig:
    width = args.intermediate if kind == "crammed" else 2 * args.intermediate
    overrides = [f"arch={'crammed-bert' if kind == 'crammed' else 'hf-bert-base'}",
                 f"arch.num_layers={args.layers}", f"arch.hidden_size={args.hidden}",
                 f"arch.num_heads={args.heads}", f"arch.intermediate_size={width}",
                 f"arch.max_seq_length={args.seq}", f"arch.dropout={args.dropout}",
                 f"arch.attention_dropout={args.dropout}"]
    return load_pretrain_config(compose("pretrain", overrides)).arch


class OursRunner:
    """Our encoder in the evaluation package's ``finetune`` loop."""

    name = "crammed (finetune)"

    def __init__(self, args: argparse.Namespace) -> None:
        self.arch = arch_for("crammed", args)
        encoder = build_model(self.arch, vocab_size=args.vocab)
        self.model = TaskModel(encoder, num_outputs=2, dropout=args.dropout)
        self.task = get_task("sst2")
        self.settings = EvalSettings(batch_size=args.batch, epochs=1, lr=args.lr)
        self.batch = args.batch

    def run(self, instances: list[Instance]) -> None:
        finetune(self.model, self.task, instances, self.settings, seed=0,
                 device=torch.device("cpu"), pad_id=0, microbatch_size=self.batch,
                 on_epoch_end=dict, progress=False)


class HFLoopRunner:
    """transformers' BertForSequenceClassification in a plain PyTorch loop."""

    name = "hf-bert (plain loop)"

    def __init__(self, args: argparse.Namespace) -> None:
        from transformers import BertForSequenceClassification

        self.arch = arch_for("hf-bert", args)
        config = bert_config(self.arch, args.vocab)
        config.num_labels = 2
        self.model = BertForSequenceClassification._from_config(config,
                                                                  attn_implementation="sdpa")
        self.settings = EvalSettings(batch_size=args.batch, epochs=1, lr=args.lr)
        self.batch = args.batch

    def run(self, instances: list[Instance]) -> None:
        plan = plan_steps(len(instances), self.settings)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.settings.lr,
                                      betas=tuple(self.settings.betas), eps=self.settings.eps,
                                      weight_decay=self.settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: lr_multiplier(step, plan, self.settings.scheduler))
        self.model.train()
        order = torch.randperm(len(instances), generator=torch.Generator().manual_seed(0))
        for start in range(0, len(instances), self.batch):
            batch = collate([instances[i] for i in order[start:start + self.batch].tolist()], 0)
            optimizer.zero_grad(set_to_none=True)
            out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                             token_type_ids=batch.token_type_ids, labels=batch.labels)
            out.loss.backward()
            if not math.isfinite(out.loss.item()):
                raise RuntimeError("HF fine-tuning diverged")
            optimizer.step()
            scheduler.step()


class HFTrainerRunner(HFLoopRunner):
    """The same model through ``transformers.Trainer`` (needs ``accelerate``)."""

    name = "hf-bert (Trainer)"

    def __init__(self, args: argparse.Namespace, output_dir: str) -> None:
        super().__init__(args)
        self.output_dir = output_dir
        self.args = args

    def run(self, instances: list[Instance]) -> None:
        from transformers import Trainer, TrainingArguments

        rows = [{"input_ids": inst.input_ids[0], "token_type_ids": inst.token_type_ids[0],
                 "labels": inst.label} for inst in instances]

        def collator(features: list[dict]) -> dict[str, torch.Tensor]:
            batch = collate([Instance([f["input_ids"]], [f["token_type_ids"]], [[]],
                                      f["labels"], 0) for f in features], 0)
            return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                    "token_type_ids": batch.token_type_ids, "labels": batch.labels}

        training_args = TrainingArguments(
            output_dir=self.output_dir, per_device_train_batch_size=self.batch,
            num_train_epochs=1, learning_rate=self.settings.lr, warmup_ratio=0.1,
            lr_scheduler_type="cosine", save_strategy="no", report_to=[], logging_strategy="no",
            use_cpu=True, dataloader_num_workers=0, disable_tqdm=True)
        Trainer(model=self.model, args=training_args, train_dataset=rows,
                data_collator=collator).train()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--full", action="store_true", help="crammed-bert size (16 x 768)")
    for key, value in REDUCED.items():
        parser.add_argument(f"--{key}", type=int, default=None,
                            help=f"default {value} (--full: {FULL[key]})")
    parser.add_argument("--min-len", type=int, default=None, help="default seq / 4")
    parser.add_argument("--examples", type=int, default=96, help="examples per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dropout", type=float, default=0.1, help="both models")
    parser.add_argument("--lr", type=float, default=4e-5)
    parser.add_argument("--no-trainer", action="store_true", help="skip HF Trainer")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--label", default="")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    fill_defaults(args, FULL if args.full else REDUCED)
    args.min_len = args.min_len or max(3, args.seq // 4)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import tempfile

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    torch.manual_seed(0)
    runners: list[Any] = [OursRunner(args), HFLoopRunner(args)]
    notes = ["ours: cramming.evaluation.finetune.finetune (the evaluation package's loop)"]
    tmp = tempfile.TemporaryDirectory(prefix="bench-eval-")
    if not args.no_trainer:
        try:
            import accelerate  # noqa: F401  (transformers.Trainer needs it)

            runners.append(HFTrainerRunner(args, tmp.name))
        except ImportError:
            notes.append("HF Trainer skipped: the accelerate package is not installed")
    instances = synthetic_instances(args.examples, args.min_len, args.seq, args.vocab, 0)
    warmup = instances[: 2 * args.batch]
    timings: dict[str, list[float]] = {r.name: [] for r in runners}
    for runner in runners:
        runner.run(warmup)
    for repeat in range(args.repeats):
        for runner in runners if repeat % 2 == 0 else runners[::-1]:
            run: Callable[[], None] = lambda r=runner: r.run(instances)  # noqa: E731
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
            timings[runner.name].append(len(instances) / seconds)
            print(f"  repeat {repeat + 1}/{args.repeats} {runner.name:<22} "
                  f"{len(instances) / seconds:8.2f} examples/s", flush=True)
    tmp.cleanup()
    results = [{"runner": r.name, "arch": dataclasses.asdict(r.arch),
                "params": sum(p.numel() for p in r.model.parameters()),
                "examples_per_second": summarize(timings[r.name])} for r in runners]
    reference = next(r for r in results if r["runner"].startswith("hf-bert (plain"))
    for r in results:
        r["speedup_vs_hf_loop"] = (r["examples_per_second"]["median"]
                                   / reference["examples_per_second"]["median"])
    print(f"\n{args.examples} examples per block, batch {args.batch}, lengths "
          f"{args.min_len}..{args.seq}; " + "; ".join(notes))
    print_table([{"runner": r["runner"], "params": r["params"] / 1e6,
                  "eps": r["examples_per_second"]["median"],
                  "spread": 100 * r["examples_per_second"]["spread"],
                  "x": r["speedup_vs_hf_loop"]} for r in results],
                [("runner", "runner", ""), ("params", "params(M)", ".1f"),
                 ("eps", "examples/s", ".2f"), ("spread", "spread%", ".0f"),
                 ("x", "vs HF loop", ".2f")])
    label = ("full" if args.full else "reduced") + (f"_{args.label}" if args.label else "")
    return finish("eval_throughput", args, info, label, notes=notes, results=results)


if __name__ == "__main__":
    main()
