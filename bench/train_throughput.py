"""Pretraining throughput: our crammed encoder vs transformers' BertForMaskedLM, same size.

Every measured step of ``crammed``, ``crammed-mlp``, ``crammed-compile`` and ``hf-bert`` is a
real ``Trainer.train_step()`` (row fetch from a memory-mapped packed array, the configured
objective's masking (``build_objective``), forward/backward over the microbatches, gradient
clipping, AdamW step). Two peers run without the Trainer, as a plain PyTorch loop (forward
with labels -> backward -> clip -> AdamW step over microbatches masked in advance):
``eager-loop`` (our crammed model, same settings as ``crammed``: it shows the engine's
overhead) and, with ``--peer-cramming PATH``, ``cramming-original``: Cramming's own model
code (JonasGeiping/cramming, imported from the user's checkout at PATH, see
:mod:`bench.cramming_original`) at the same size. ``crammed-compile`` is ``crammed`` with
``impl.compile=true`` (compiled vs eager).

Models are measured alternately (order flipped every repeat) in one process, with matmul
peak probes between the repeats (fp32 on the CPU). MFU = median useful FLOP/s / best probe
(a conservative figure on shared cores); "paired MFU" divides each block by the better of
the probes just before and after it (median over blocks); "exec MFU" counts executed FLOPs
(HF's dense decoding included) instead of useful ones. "wait%" is the data-wait fraction,
sum(data_wait_seconds) / sum(step_seconds) over the timed steps, as the step's record
reports them ("-" when the trainer does not report them).

Usage, from the repo root::

    python -m bench.train_throughput                         # reduced size, a few minutes
    python -m bench.train_throughput --full                  # crammed-bert size (16x768)
    python -m bench.train_throughput --layers 6 --hidden 384 --heads 6 --intermediate 768 \\
        --seq 64 --vocab 16384 --batch 32 --microbatch 16 --repeats 7
    python -m bench.train_throughput --models crammed,crammed-mlp,hf-bert \\
        --ours train.optim.fused=true --hf arch.attention_impl=eager
    python -m bench.train_throughput --models crammed,crammed-compile,eager-loop,hf-bert
    python -m bench.train_throughput --peer-cramming ~/src/cramming   # + Cramming's model

``--intermediate`` is our GLU branch width; HF BERT (MLP) gets ``--hf-intermediate``,
default twice that (Cramming's convention: ``intermed_size`` counts both GLU branches, so
both first FFN matmuls have the same output width). ``crammed-mlp`` is our implementation
with HF's FFN structure and width (``ffn=mlp``), for an implementation-only comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    PeakProbe,
    fill_defaults,
    finish,
    machine_info,
    print_table,
    summarize,
)
from bench.flops import executed_flops_per_token, useful_flops_per_token
from cramming.architectures import build_model
from cramming.backend.engine import Trainer
from cramming.backend.runtime import Runtime, resolve_runtime, seed_everything
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
PEER = "cramming-original"  # Cramming's own model code, only with --peer-cramming PATH
BASE_ARCH = {"crammed": "crammed-bert", "crammed-mlp": "crammed-bert",
             "crammed-compile": "crammed-bert", "eager-loop": "crammed-bert",
             "hf-bert": "hf-bert-base", PEER: "crammed-bert"}
LOOPS = ("eager-loop", PEER)  # plain PyTorch loops, no Trainer
MFU_GOAL_CPU = 0.80  # of the fp32 matmul peak, on useful FLOPs, at crammed-bert size


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
    mlp = kind in ("crammed-mlp", "hf-bert")
    overrides = [
        f"arch={BASE_ARCH[kind]}", f"arch.num_layers={args.layers}",
        f"arch.hidden_size={args.hidden}", f"arch.num_heads={args.heads}",
        f"arch.max_seq_length={args.seq}", f"arch.dropout={args.dropout}",
        f"arch.attention_dropout={args.dropout}",
        f"arch.intermediate_size={mlp_width if mlp else glu_width}",
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
    if kind == "crammed-compile":
        overrides.append("impl.compile=true")
    return overrides


def no_sync() -> None:
    return None


def graph_breaks() -> int:
    """torch.compile graph breaks so far in this process (Dynamo's counter)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover
        return 0
    return sum(counters["graph_break"].values())


def device_sync(device: torch.device) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA); timed regions end with it, steps never."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return no_sync


@dataclasses.dataclass
class Contender:
    """One model measured in blocks of ``steps`` train steps.

    ``step`` runs one optimizer step and returns its record (the Trainer's, or the plain
    loop's); ``tokens`` counts the training tokens so far.
    """

    kind: str
    cfg: PretrainConfig
    step: Callable[[], dict]
    tokens: Callable[[], int]
    useful_flops: float
    executed_flops: float
    params: int
    device: torch.device
    trainer: Trainer | None = None
    loop: PlainLoop | None = None
    graph_breaks: int | None = None  # torch.compile graph breaks while it warmed up
    block_seconds: list[float] = dataclasses.field(default_factory=list)
    block_tokens: list[int] = dataclasses.field(default_factory=list)
    data_wait: list[float] = dataclasses.field(default_factory=list)
    step_wall: list[float] = dataclasses.field(default_factory=list)

    @property
    def compiled(self) -> bool:
        return bool(self.cfg.impl.compile)

    def run(self, steps: int) -> float:
        """Run ``steps`` train steps; returns and records their tokens/s (device work
        included: CUDA is synchronized before and after the block, never inside a step)."""
        sync = device_sync(self.device)
        sync()
        tokens_before = self.tokens()
        records = []
        start = time.perf_counter()
        for _ in range(steps):
            records.append(self.step())
        sync()
        seconds = time.perf_counter() - start
        tokens = self.tokens() - tokens_before
        self.block_seconds.append(seconds)
        self.block_tokens.append(tokens)
        for record in records:
            wait, wall = record.get("data_wait_seconds"), record.get("step_seconds")
            if wait is not None and wall is not None:
                self.data_wait.append(float(wait))
                self.step_wall.append(float(wall))
        return tokens / seconds

    def close(self) -> None:
        """Stop the Trainer's data workers, where it has them."""
        close = getattr(getattr(self.trainer, "pipeline", None), "close", None)
        if close is not None:
            close()

    @property
    def data_wait_fraction(self) -> float | None:
        """sum(data_wait_seconds) / sum(step_seconds) of the timed steps (None: unreported)."""
        total = sum(self.step_wall)
        return sum(self.data_wait) / total if self.step_wall and total > 0 else None


class PlainLoop:
    """A plain PyTorch training loop: forward with labels -> backward -> clip -> AdamW step.

    No Trainer, no objective in the step: the microbatches were masked in advance (and put
    on the device), so the loop measures the model, the optimizer and nothing else. Same
    precision (autocast), compile setting, clipping and AdamW settings as the Trainer.
    """

    def __init__(self, model: torch.nn.Module, cfg: PretrainConfig, runtime: Runtime,
                 batches: list[tuple[torch.Tensor, torch.Tensor]], accumulation: int,
                 pass_kwargs: dict | None = None) -> None:
        self.runtime, self.batches, self.accumulation = runtime, batches, accumulation
        self.model = model.to(runtime.device)
        self.model.train()
        self.forward = torch.compile(self.model, mode=cfg.impl.compile_mode) \
            if cfg.impl.compile else self.model
        optim, device = cfg.train.optim, runtime.device
        fused = optim.fused if optim.fused is not None else device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=optim.lr, betas=(float(optim.betas[0]),
                                                         float(optim.betas[1])),
            eps=optim.eps, weight_decay=optim.weight_decay, fused=fused or None)
        self.scaler = torch.amp.GradScaler(device.type, enabled=runtime.needs_grad_scaler)
        self.clip = cfg.train.gradient_clipping
        self.kwargs = pass_kwargs or {}
        self.cursor = 0
        self.tokens = 0

    def step(self) -> dict:
        start = time.perf_counter()
        wait = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for _ in range(self.accumulation):
            fetch = time.perf_counter()
            input_ids, labels = self.batches[self.cursor % len(self.batches)]
            self.cursor += 1
            wait += time.perf_counter() - fetch
            with self.runtime.autocast():
                loss = self.forward(input_ids, labels=labels, **self.kwargs)["loss"]
            self.scaler.scale(loss / self.accumulation).backward()
            self.tokens += input_ids.numel()
        self.scaler.unscale_(self.optimizer)
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"data_wait_seconds": wait, "step_seconds": time.perf_counter() - start}


def predicted_fraction(data: PackedDataset, masker: MLMMasker, mask_prob: float) -> float:
    """Fraction of tokens that get an MLM label (what a sparse head decodes), measured."""
    rows = data.batch(np.arange(min(len(data), 512)))["input_ids"]
    _, labels = masker(rows, mask_prob, torch.Generator().manual_seed(0))
    return float((labels != -100).float().mean())


def premasked_batches(cfg: PretrainConfig, args: argparse.Namespace, data: PackedDataset,
                      device: torch.device, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` microbatches masked by the configured objective, already on ``device``."""
    objective = build_objective(cfg, SyntheticTokenizer(args.vocab))
    batches = []
    for index in range(count):
        rows = data.batch(np.arange(index * args.microbatch, (index + 1) * args.microbatch)
                          % len(data))
        batch = objective.microbatch(rows, 0.0, index)
        batches.append((batch.input_ids.to(device), batch.labels.to(device)))
    return batches


def build_contender(kind: str, args: argparse.Namespace, data: PackedDataset, masker: MLMMasker,
                    fraction: float, run_dir: Path) -> Contender:
    cfg = load_pretrain_config(compose("pretrain", model_overrides(kind, args)))
    seed_everything(cfg.seed)
    runtime = resolve_runtime(cfg.impl)
    model = build_model(cfg.arch, vocab_size=args.vocab, pad_token_id=0)
    useful = useful_flops_per_token(model, args.seq, fraction)
    executed = executed_flops_per_token(model, args.seq, fraction)
    params = model.num_parameters()
    if kind not in LOOPS:
        objective = build_objective(cfg, SyntheticTokenizer(args.vocab))
        trainer = Trainer(cfg, model, data, objective, runtime, run_dir / kind)
        trainer.clock.start()
        return Contender(kind, cfg, trainer.train_step, lambda: trainer.tokens, useful,
                         executed, params, runtime.device, trainer=trainer)
    accumulation = max(args.batch // args.microbatch, 1)
    count = min(accumulation * (args.warmup + args.repeats * args.steps), 32)
    batches = premasked_batches(cfg, args, data, runtime.device, max(count, 1))
    if kind == PEER:
        from bench.cramming_original import build_original_model

        # Cramming decodes round(mask_prob * tokens) positions: executed at that fraction.
        executed = executed_flops_per_token(model, args.seq, args.mask_prob)
        seed_everything(cfg.seed)
        model = build_original_model(
            args.peer_cramming, args.vocab, layers=args.layers, hidden=args.hidden,
            heads=args.heads, intermed_size=2 * args.intermediate, seq=args.seq,
            dropout=args.dropout, mask_prob=args.mask_prob)
        params = sum(p.numel() for p in model.parameters())
    loop = PlainLoop(model, cfg, runtime, batches, accumulation)
    return Contender(kind, cfg, loop.step, lambda: loop.tokens, useful, executed, params,
                     runtime.device, loop=loop)


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
                        help="comma list of " + ", ".join(k for k in BASE_ARCH if k != PEER))
    parser.add_argument("--peer-cramming", default=None, metavar="PATH",
                        help="checkout of JonasGeiping/cramming: adds its model "
                             f"('{PEER}') at the same size (imported from PATH, not vendored)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per model")
    parser.add_argument("--steps", type=int, default=1, help="train steps per timed block")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul probe size")
    parser.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                        help="skip models not yet warm and stop repeating after this long")
    parser.add_argument("--keep-going", action="store_true",
                        help="a model that fails is reported and left out, not fatal")
    parser.add_argument("--common", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for every model")
    parser.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE",
                        help="Hydra overrides for our models (crammed*, eager-loop, "
                             f"{PEER}'s runtime)")
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
    if args.peer_cramming:
        from bench.cramming_original import OriginalNotFound, checkout_root

        try:
            args.peer_cramming = str(checkout_root(args.peer_cramming))
        except OriginalNotFound as error:
            sys.exit(f"error: {error}")
        if PEER not in args.models:
            args.models.append(PEER)
    elif PEER in args.models:
        sys.exit(f"error: --models {PEER} needs --peer-cramming PATH (a JonasGeiping/cramming "
                 "checkout)")
    return args


def measure(args: argparse.Namespace, probe: PeakProbe) -> dict[str, Any]:
    """Build, warm up and time every model of ``args.models`` (alternating, probes between
    repeats); returns the contenders that ran, the failures and the predicted fraction."""
    started = time.monotonic()

    def out_of_time() -> bool:
        return args.time_limit is not None and time.monotonic() - started > args.time_limit

    blocks = args.repeats + args.warmup
    rows = max(4 * args.batch, args.batch * (blocks * args.steps + 2) * len(args.models))
    failures: dict[str, str] = {}
    contenders: list[Contender] = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        tmp_path = Path(tmp)
        data = synthetic_corpus(tmp_path, rows, args.seq, args.vocab, args.seed)
        masker = MLMMasker(args.vocab, MASK_ID, SPECIAL_IDS)
        fraction = predicted_fraction(data, masker, args.mask_prob)
        for kind in args.models:  # build + warm-up: allocator, compile, optimizer state
            if out_of_time():
                failures[kind] = "skipped: --time-limit reached before it was built"
                print(f"  {kind:<17} {failures[kind]}")
                continue
            begin, breaks = time.perf_counter(), graph_breaks()
            try:
                contender = build_contender(kind, args, data, masker, fraction, tmp_path)
                for _ in range(args.warmup):
                    contender.step()
                device_sync(contender.device)()
            except Exception as error:
                if not args.keep_going:
                    raise
                traceback.print_exc()
                failures[kind] = f"failed: {type(error).__name__}: {error}".splitlines()[0]
                print(f"  {kind:<17} {failures[kind]}")
                continue
            contender.graph_breaks = graph_breaks() - breaks if contender.compiled else None
            contenders.append(contender)
            note = "" if not contender.compiled else (
                f" (compile included; {contender.graph_breaks} graph break(s)"
                f"{': TORCH_LOGS=graph_breaks shows where' if contender.graph_breaks else ''})")
            print(f"  {kind:<17} built and warmed up in {time.perf_counter() - begin:.1f} s"
                  f"{note}", flush=True)
        probe.measure()
        for repeat in range(args.repeats):
            if repeat and out_of_time():
                print(f"  --time-limit reached: stopping after {repeat} repeat(s)")
                break
            order = contenders if repeat % 2 == 0 else contenders[::-1]
            for contender in order:
                rate = contender.run(args.steps)
                print(f"  repeat {repeat + 1}/{args.repeats} {contender.kind:<17} "
                      f"{rate:12.1f} tokens/s", flush=True)
            probe.measure()
        for contender in contenders:
            contender.close()
    return {"contenders": contenders, "failures": failures, "predicted_fraction": fraction}


def summarize_results(contenders: list[Contender], probe: PeakProbe, args: argparse.Namespace
                      ) -> list[dict[str, Any]]:
    """One result dict per contender: tokens/s, MFU (best / paired probe), data wait, HF ratio."""
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
            "runner": "plain loop" if c.trainer is None else "Trainer.train_step",
            "compiled": c.compiled, "graph_breaks": c.graph_breaks,
            "precision": c.cfg.impl.precision,
            "tokens_per_second": stats, "step_seconds": summarize(
                [s / args.steps for s in c.block_seconds]),
            "useful_flops_per_token": c.useful_flops,
            "executed_flops_per_token": c.executed_flops,
            "useful_flops_per_second": stats["median"] * c.useful_flops,
            "mfu": stats["median"] * c.useful_flops / peak,
            "executed_mfu": stats["median"] * c.executed_flops / peak,
            "mfu_paired": summarize(paired),
            "data_wait_fraction": c.data_wait_fraction,
            "data_wait_seconds": sum(c.data_wait) if c.data_wait else None,
            "reported_step_seconds": sum(c.step_wall) if c.step_wall else None,
        })
    reference = next((r for r in results if r["model"] == "hf-bert"), None)
    for r in results:
        if reference is not None:
            r["speedup_vs_hf"] = (r["tokens_per_second"]["median"]
                                  / reference["tokens_per_second"]["median"])
    return results


def print_results(results: list[dict[str, Any]], probe: PeakProbe, fraction: float,
                  args: argparse.Namespace) -> None:
    table = [{"model": r["model"], "compile": "yes" if r["compiled"] else "no",
              "params": r["params"] / 1e6, "tps": r["tokens_per_second"]["median"],
              "spread": 100 * r["tokens_per_second"]["spread"],
              "gflop": r["useful_flops_per_token"] / 1e9,
              "gflops": r["useful_flops_per_second"] / 1e9,
              "mfu": 100 * r["mfu"], "xmfu": 100 * r["executed_mfu"],
              "pmfu": 100 * r["mfu_paired"]["median"],
              "wait": None if r["data_wait_fraction"] is None else 100 * r["data_wait_fraction"],
              "speedup": r.get("speedup_vs_hf")} for r in results]
    print(f"\n{probe.dtype_name} matmul peak ({probe.size}^3 on {probe.device}, best of "
          f"{len(probe.samples)} probes): {probe.peak / 1e9:.1f} GFLOP/s; predicted fraction "
          f"{fraction:.4f}; {args.batch} x {args.seq} tokens per step")
    print_table(table, [("model", "model", ""), ("compile", "compile", ""),
                        ("params", "params(M)", ".1f"),
                        ("tps", "tokens/s", ".1f"), ("spread", "spread%", ".1f"),
                        ("gflop", "useful GFLOP/tok", ".4f"), ("gflops", "GFLOP/s", ".1f"),
                        ("mfu", "MFU%", ".1f"), ("pmfu", "paired MFU%", ".1f"),
                        ("xmfu", "exec MFU%", ".1f"), ("wait", "wait%", ".2f"),
                        ("speedup", "vs HF", ".2f")])


def goal(name: str, value: float | None, target: str, passed: bool | None,
         note: str = "") -> dict[str, Any]:
    return {"goal": name, "value": value, "target": target,
            "status": "n/a" if passed is None else ("PASS" if passed else "FAIL"), "note": note}


def print_goals(goals: list[dict[str, Any]]) -> None:
    print("\ngoals (printed, not asserted):")
    for g in goals:
        value = "-" if g["value"] is None else f"{g['value']:.3g}"
        note = f"  ({g['note']})" if g["note"] else ""
        print(f"  {g['status']:<4}  {g['goal']}: {value} (target {g['target']}){note}")


def cpu_goals(results: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The CPU goals: useful MFU >= 80 % of the fp32 peak at crammed-bert size; compile
    not slower than eager."""
    by_model = {r["model"]: r for r in results}
    full = all(getattr(args, k) == v for k, v in FULL.items() if k not in ("batch", "microbatch"))
    goals = []
    for kind in ("crammed", "crammed-compile"):
        if kind in by_model:
            mfu = by_model[kind]["mfu"]
            goals.append(goal(f"{kind} useful MFU vs fp32 peak", mfu, f">= {MFU_GOAL_CPU:.2f}",
                              mfu >= MFU_GOAL_CPU,
                              "" if full else "stated for crammed-bert size (--full)"))
    if "crammed" in by_model and "crammed-compile" in by_model:
        ratio = (by_model["crammed-compile"]["tokens_per_second"]["median"]
                 / by_model["crammed"]["tokens_per_second"]["median"])
        goals.append(goal("compiled / eager tokens/s (crammed-compile / crammed)", ratio,
                          ">= 1.00", ratio >= 1.0))
    return goals


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
    measured = measure(args, probe)
    fraction = measured["predicted_fraction"]
    results = summarize_results(measured["contenders"], probe, args)
    print_results(results, probe, fraction, args)
    for kind, why in measured["failures"].items():
        print(f"  {kind}: {why}")
    goals = cpu_goals(results, args)
    print_goals(goals)
    label = ("full" if args.full else "reduced") + (f"_{args.label}" if args.label else "")
    return finish("train_throughput", args, info, label, shape=shape,
                  predicted_fraction=fraction, peak=probe.as_dict(), results=results,
                  failures=measured["failures"], goals=goals)


if __name__ == "__main__":
    main()
