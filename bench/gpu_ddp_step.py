"""A few DDP training steps of crammed-bert under torchrun (for bench.gpu_check).

    python -m torch.distributed.run --standalone --nproc_per_node=2 -m bench.gpu_ddp_step \\
        --json out.json [bench.train_throughput options: shape, --device, --ours ...]

Every rank runs real ``Trainer.train_step()`` calls with the process group (NCCL on CUDA,
gloo on the CPU); rank 0 writes global tokens/s and the data-wait fraction to ``--json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from bench.train_throughput import (
    SyntheticTokenizer,
    device_sync,
    model_overrides,
    synthetic_corpus,
)
from bench.train_throughput import parse_args as throughput_args
from cramming.architectures import build_model
from cramming.backend.distributed import cleanup_distributed, init_distributed
from cramming.backend.engine import Trainer
from cramming.backend.runtime import resolve_runtime, seed_everything
from cramming.config import compose, load_pretrain_config
from cramming.objectives import build_objective


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    own, rest = parser.parse_known_args(argv)
    args = throughput_args(rest)
    cfg = load_pretrain_config(compose("pretrain", model_overrides("crammed", args)))
    runtime = resolve_runtime(cfg.impl)
    context = init_distributed(runtime.device.type)
    if context.enabled and runtime.device.type == "cuda":
        runtime = dataclasses.replace(runtime, device=torch.device("cuda", context.local_rank))
    seed_everything(cfg.seed)
    sync = device_sync(runtime.device)
    rows = args.batch * (args.warmup + args.repeats * args.steps + 2)
    with tempfile.TemporaryDirectory(prefix=f"ddp-step-{context.rank}-") as tmp:
        data = synthetic_corpus(Path(tmp), rows, args.seq, args.vocab, args.seed)
        model = build_model(cfg.arch, vocab_size=args.vocab, pad_token_id=0)
        objective = build_objective(cfg, SyntheticTokenizer(args.vocab))
        trainer = Trainer(cfg, model, data, objective, runtime, Path(tmp) / "run",
                          context=context)
        trainer.clock.start()
        for _ in range(args.warmup):
            trainer.train_step()
        steps = args.repeats * args.steps
        sync()
        context.barrier()
        tokens_before, wait, wall = trainer.tokens, 0.0, 0.0
        start = time.perf_counter()
        for _ in range(steps):
            record = trainer.train_step()
            wait += float(record.get("data_wait_seconds") or 0.0)
            wall += float(record.get("step_seconds") or 0.0)
        sync()
        seconds = time.perf_counter() - start
        reported = "data_wait_seconds" in record and "step_seconds" in record
        close = getattr(getattr(trainer, "pipeline", None), "close", None)
        if close is not None:
            close()
    tokens = trainer.tokens - tokens_before  # global: every rank's share counted
    waits = context.gather_objects((wait, wall))
    if context.is_main:
        total_wait = sum(w for w, _ in waits)
        total_wall = sum(s for _, s in waits)
        result = {"world_size": context.world_size,
                  "backend": dist.get_backend() if context.enabled else "none",
                  "steps": steps, "seconds": seconds, "tokens": tokens,
                  "tokens_per_second": tokens / seconds,
                  "data_wait_fraction": total_wait / total_wall
                  if reported and total_wall > 0 else None,
                  "overrides": model_overrides("crammed", args)}
        Path(own.json).write_text(json.dumps(result, indent=2) + "\n")
    cleanup_distributed()


if __name__ == "__main__":
    main()
