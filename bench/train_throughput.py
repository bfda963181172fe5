"""Pretraining throughput: our crammed encoder vs transformers' BertForMaskedLM, same size.

Every measured step is a real ``Trainer.train_step()`` (row fetch from a memory-mapped packed
array, the configured objective's masking (``build_objective``), forward/backward over the
microbatches, gradient clipping, AdamW step).
Models are measured alternately (order flipped every repeat) in one process, with fp32
matmul peak probes between the repeats. MFU = median useful FLOP/s / best probe (a
conservative figure on shared cores); "paired MFU" divides each block by the better of the
probes just before and after it (median over blocks); "exec MFU" counts executed FLOPs
(HF's dense decoding included) instead of useful ones.

Usage, from the repo root::

    python -m bench.train_throughput                         # reduced size, a few minutes
    python -m bench.train_throughput --full                  # crammed-bert size (16x768)
    python -m bench.train_throughput --layers 6 --hidden 384 --heads 6 --intermediate 768 \\
        --seq 64 --vocab 16384 --batch 32 --microbatch 16 --repeats 7
    python -m bench.train_throughput --models crammed,crammed-mlp,hf-bert \\
        --ours train.optim.fused=true --hf arch.attention_impl=eager

``--intermediate`` is our GLU branch width; HF BERT (MLP) gets ``--hf-intermediate``,
default twice that (Cramming's convention: ``intermed_size`` counts both GLU branches, so
both first FFN matmuls have the same output width). ``crammed-mlp`` is our implementation
with HF's FFN structure and width (``ffn=mlp``), for an implementation-only comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import PeakProbe, fill_defaults, finish, machine_info, print_table, summarize
from bench.flops import executed_flops_per_token, useful_flops_per_token
from cramming.architectures import build_model
from cramming.backend.engine import Trainer
from cramming.backend.runtime import resolve_runtime, seed_everything
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import PretrainConfig
from cramming.data import MLMMasker, PackedDataset
from cramming.objectives import build_objective

SPECIAL_IDS = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK], as our tokenizers number them
CLS_ID, SEP_ID, MASK_ID = 2, 3, 4
REDUCED = dict(layers=4, hidden=512, heads=8, intermediate=1024, seq=128, vocab=32768,
               batch=32, microbatch=16)
FULL = dict(layers=16, hidden=768, heads=12, intermediate=1536, seq=128, vocab=32768,
            batch=32, microbatch=16)
BASE_ARCH = {"crammed": "crammed-bert", "crammed-mlp": "crammed-bert", "hf-bert": "hf-bert-base"}


class SyntheticTokenizer:
    """What the objective needs from a tokenizer, for the synthetic token ids."""

    pad_token_id, cls_token_id, sep_token_id, mask_token_id = 0, CLS_ID, SEP_ID, MASK_ID
    all_special_ids = list(SPECIAL_IDS)

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size


def synthetic_corpus(folder: Path, rows: int, seq: int, vocab: int, seed: int = 0,
                     mean_doc_tokens: int = 300) -> PackedDataset:
    """Packed rows like ``prepare_data`` writes them ([CLS] + tokens, [SEP] between documents),
    saved as .npy and memory-mapped, so fetching rows costs what it costs in a real run."""
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if vocab <= 65536 else np.int32
    ids = rng.integers(len(SPECIAL_IDS), vocab, size=(rows, seq), dtype=np.int64)
    ids[rng.random((rows, seq)) < 1.0 / mean_doc_tokens] = SEP_ID
    ids[:, 0] = CLS_ID
    np.save(folder / "train_input_ids.npy", ids.astype(dtype))
    np.save(folder / "train_example_ids.npy", np.arange(rows, dtype=np.int64))
    return PackedDataset.load(folder, "train")


def model_overrides(kind: str, args: argparse.Namespace) -> list[str]:
    """Hydra overrides of one compared model (shape shared, structure per model)."""
    glu_width = args.intermediate
    mlp_width = args.hf_intermediate or 2 * args.intermediate
    overrides = [
        f"arch={BASE_ARCH[kind]}", f"arch.num_layers={args.layers}",
        f"arch.hidden_size={args.hidden}", f"arch.num_heads={args.heads}",
        f"arch.max_seq_length={args.seq}", f"arch.dropout={args.dropout}",
        f"arch.attention_dropout={args.dropout}",
        f"arch.intermediate_size={glu_width if kind == 'crammed' else mlp_width}",
        f"data.seq_length={args.seq}", f"data.vocab_size={args.vocab}",
        f"train.batch_size={args.batch}", "train.batch_size_ramp=0",
        f"train.mask_prob={args.mask_prob}", f"impl.microbatch_size={args.microbatch}",
        f"impl.device={args.device}", "impl.progress_bar=false",
        "budget_kind=steps", "budget=1000000000", f"seed={args.seed}",
    ]
    if args.threads:
        overrides.append(f"impl.threads={args.threads}")
    if kind == "crammed-mlp":
        overrides.append("arch.ffn=mlp")
    overrides += args.common
    overrides += args.hf if kind == "hf-bert" else args.ours
    return overrides


@dataclasses.dataclass
class Contender:
    """One model with its own Trainer, measured in blocks of ``steps`` train steps."""

    kind: str
    cfg: PretrainConfig
    trainer: Trainer
    useful_flops: float
    executed_flops: float
    params: int
    block_seconds: list[float] = dataclasses.field(default_factory=list)
    block_tokens: list[int] = dataclasses.field(default_factory=list)

    def run(self, steps: int) -> float:
        """Run ``steps`` train steps; returns and records their tokens/s."""
        tokens_before = self.trainer.tokens
        start = time.perf_counter()
        for _ in range(steps):
            self.trainer.train_step()
        seconds = time.perf_counter() - start
        tokens = self.trainer.tokens - tokens_before
        self.block_seconds.append(seconds)
        self.block_tokens.append(tokens)
        return tokens / seconds


def predicted_fraction(data: PackedDataset, masker: MLMMasker, mask_prob: float) -> float:
    """Fraction of tokens that get an MLM label (what a sparse head decodes), measured."""
    rows = data.batch(np.arange(min(len(data), 512)))["input_ids"]
    _, labels = masker(rows, mask_prob, torch.Generator().manual_seed(0))
    return float((labels != -100).float().mean())


def build_contender(kind: str, args: argparse.Namespace, data: PackedDataset, masker: MLMMasker,
                    fraction: float, run_dir: Path) -> Contender:
    cfg = load_pretrain_config(compose("pretrain", model_overrides(kind, args)))
    seed_everything(cfg.seed)
    runtime = resolve_runtime(cfg.impl)
    model = build_model(cfg.arch, vocab_size=args.vocab, pad_token_id=0)
    objective = build_objective(cfg, SyntheticTokenizer(args.vocab))
    trainer = Trainer(cfg, model, data, objective, runtime, run_dir / kind)
    trainer.clock.start()
    return Contender(kind, cfg, trainer, useful_flops_per_token(model, args.seq, fraction),
                     executed_flops_per_token(model, args.seq, fraction),
                     model.num_parameters())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--full", action="store_true", help="crammed-bert size (16 x 768)")
    for key, value in REDUCED.items():
        parser.add_argument(f"--{key}", type=int, default=None,
                            help=f"default {value} (--full: {FULL[key]})")
    parser.add_argument("--hf-intermediate", type=int, default=None,
                        help="HF BERT FFN width (default: 2 x --intermediate)")
    parser.add_argument("--mask-prob", type=float, default=0.25)
    parser.add_argument("--dropout", type=float, default=0.0, help="both models (Cramming: 0)")
    parser.add_argument("--models", default="crammed,hf-bert",
                        help="comma list of crammed, crammed-mlp, hf-bert")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per model")
    parser.add_argument("--steps", type=int, default=1, help="train steps per timed block")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul probe size")
    parser.add_argument("--common", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every model")
    parser.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for crammed / crammed-mlp only")
    parser.add_argument("--hf", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for hf-bert only")
    parser.add_argument("--label", default="", help="added to the result file name")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    sizes = FULL if args.full else REDUCED
    fill_defaults(args, sizes)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(BASE_ARCH)
    if unknown:
        parser.error(f"unknown --models {sorted(unknown)}; choose from {list(BASE_ARCH)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    shape = {k: getattr(args, k) for k in REDUCED}
    shape["hf_intermediate"] = args.hf_intermediate or 2 * args.intermediate
    print(f"machine: {info['cpu']} ({info['cores']} cores, torch {info['torch']}, "
          f"{info['torch_threads']} threads); shape: {shape}")
    probe = PeakProbe(args.peak_size)
    blocks = args.repeats + args.warmup
    rows = max(4 * args.batch, args.batch * (blocks * args.steps + 2) * len(args.models))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp_path = Path(tmp)
        data = synthetic_corpus(tmp_path, rows, args.seq, args.vocab, args.seed)
        masker = MLMMasker(args.vocab, MASK_ID, SPECIAL_IDS)
        fraction = predicted_fraction(data, masker, args.mask_prob)
        contenders = [build_contender(kind, args, data, masker, fraction, tmp_path)
                      for kind in args.models]
        probe.measure()
        for contender in contenders:  # warm-up: allocator, thread pools, optimizer state
            for _ in range(args.warmup):
                contender.trainer.train_step()
        for repeat in range(args.repeats):
            order = contenders if repeat % 2 == 0 else contenders[::-1]
            for contender in order:
                rate = contender.run(args.steps)
                print(f"  repeat {repeat + 1}/{args.repeats} {contender.kind:<12} "
                      f"{rate:9.1f} tokens/s")
            probe.measure()
    peak = probe.peak
    results = []
    for c in contenders:
        rates = [t / s for t, s in zip(c.block_tokens, c.block_seconds)]
        stats = summarize(rates)
        # Each block against the probes just before and after it: the cores are shared, so
        # this pairs a block with the machine's state at that time (median over blocks).
        paired = [rate * c.useful_flops / max(probe.samples[i], probe.samples[i + 1])
                  for i, rate in enumerate(rates)]
        results.append({
            "model": c.kind, "arch": dataclasses.asdict(c.cfg.arch), "params": c.params,
            "overrides": model_overrides(c.kind, args),
            "tokens_per_second": stats, "step_seconds": summarize(
                [s / args.steps for s in c.block_seconds]),
            "useful_flops_per_token": c.useful_flops,
            "executed_flops_per_token": c.executed_flops,
            "useful_flops_per_second": stats["median"] * c.useful_flops,
            "mfu": stats["median"] * c.useful_flops / peak,
            "executed_mfu": stats["median"] * c.executed_flops / peak,
            "mfu_paired": summarize(paired),
        })
    reference = next((r for r in results if r["model"] == "hf-bert"), None)
    for r in results:
        if reference is not None:
            r["speedup_vs_hf"] = (r["tokens_per_second"]["median"]
                                  / reference["tokens_per_second"]["median"])
    table = [{"model": r["model"], "params": r["params"] / 1e6,
              "tps": r["tokens_per_second"]["median"],
              "spread": 100 * r["tokens_per_second"]["spread"],
              "gflop": r["useful_flops_per_token"] / 1e9,
              "gflops": r["useful_flops_per_second"] / 1e9,
              "mfu": 100 * r["mfu"], "xmfu": 100 * r["executed_mfu"],
              "pmfu": 100 * r["mfu_paired"]["median"],
              "speedup": r.get("speedup_vs_hf")} for r in results]
    print(f"\nfp32 matmul peak ({args.peak_size}^3, best of {len(probe.samples)} probes): "
          f"{peak / 1e9:.1f} GFLOP/s; predicted fraction {fraction:.4f}; "
          f"{args.batch} x {args.seq} tokens per step")
    print_table(table, [("model", "model", ""), ("params", "params(M)", ".1f"),
                        ("tps", "tokens/s", ".1f"), ("spread", "spread%", ".1f"),
                        ("gflop", "useful GFLOP/tok", ".4f"), ("gflops", "GFLOP/s", ".1f"),
                        ("mfu", "MFU%", ".1f"), ("pmfu", "paired MFU%", ".1f"),
                        ("xmfu", "exec MFU%", ".1f"),
                        ("speedup", "vs HF", ".2f")])
    label = ("full" if args.full else "reduced") + (f"_{args.label}" if args.label else "")
    return finish("train_throughput", args, info, label, shape=shape,
                  predicted_fraction=fraction, peak=probe.as_dict(), results=results)


if __name__ == "__main__":
    main()
