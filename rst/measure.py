"""Measure an RST table on this machine and write it as a new versioned table file.

    python -m rst.measure arch=bert-c5 impl.microbatch_size=32 data.seq_length=128 \\
        [--layers 1,2,4,8,16] [--repeats 3] [--vocab-size N] [--device-name NAME] [--out DIR]

Arguments without ``--`` are the usual pretraining overrides (they pick the architecture,
sequence length, microbatch size, vocabulary, precision and optimizer settings). The table
gets forward+backward and forward-only seconds per microbatch for each active depth in
``--layers`` (default: every depth; the lookup interpolates between measured depths) and
the seconds of one optimizer step for every optimizer. Inputs are random token ids with
``train.mask_prob`` of them masked, so no corpus is needed; ``--vocab-size`` defaults to
``data.vocab_size`` and must equal the tokenizer size of the runs that use the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from cramming.architectures import IGNORE_INDEX, build_model
from cramming.backend.optimizers import build_optimizer
from cramming.backend.runtime import resolve_runtime
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import CHOICES, PretrainConfig
from efficient_training.depth import install_active_layers
from rst.table import TABLE_FORMAT, TABLES_DIR, arch_fields, arch_hash, device_name, table_files


def _timed(function: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    for _ in range(2):  # warm-up (allocator, kernels, caches)
        function()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)  # least disturbed by other load on the machine


def measure(cfg: PretrainConfig, layers: list[int] | None = None, repeats: int = 3,
            vocab_size: int | None = None, device: str | None = None) -> dict:
    """Time the passes of ``cfg``'s model on this machine; returns the table as a dict."""
    runtime = resolve_runtime(cfg.impl)
    if cfg.impl.threads:
        torch.set_num_threads(cfg.impl.threads)
    vocab = vocab_size or cfg.data.vocab_size
    micro, seq = cfg.impl.microbatch_size, cfg.data.seq_length
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, vocab_size=vocab).to(runtime.device)
    stack = install_active_layers(model)
    depths = sorted(set(layers or range(1, len(stack) + 1)))
    if depths[0] < 1 or depths[-1] > len(stack):
        raise SystemExit(f"--layers must lie in 1..{len(stack)}")
    input_ids = torch.randint(5, vocab, (micro, seq), device=runtime.device)
    labels = torch.where(torch.rand(micro, seq, device=runtime.device) < cfg.train.mask_prob,
                         input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    sync = torch.cuda.synchronize if runtime.device.type == "cuda" else (lambda: None)
    model.train()

    def train_pass() -> None:
        with runtime.autocast():
            loss = model(input_ids, labels=labels)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward_pass() -> None:
        with runtime.autocast():
            model(input_ids, labels=labels)

    # Process-level warm-up (thread pools, allocator, kernel selection) for >= 2 seconds:
    # without it the first depth measured here came out 20x too slow.
    start = time.perf_counter()
    while time.perf_counter() - start < 2.0:
        for depth in depths:
            stack.depth = depth
            train_pass()
            forward_pass()
    sync()
    seconds: dict[str, dict[str, float]] = {"train": {}, "forward": {}}
    for depth in depths:
        stack.depth = depth
        seconds["train"][str(depth)] = _timed(train_pass, repeats, sync)
        seconds["forward"][str(depth)] = _timed(forward_pass, repeats, sync)
        print(f"{depth:3d} layers: train {seconds['train'][str(depth)]:.4f} s, "
              f"forward {seconds['forward'][str(depth)]:.4f} s", file=sys.stderr)
    stack.depth = len(stack)
    steps = {}
    for name in CHOICES["train.optim.name"]:
        optim_cfg = dataclasses.replace(cfg.train.optim, name=name)
        optimizer = build_optimizer(model, optim_cfg, runtime.device)
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        steps[name] = _timed(optimizer.step, repeats, sync)
    model.zero_grad(set_to_none=True)
    return {
        "format": TABLE_FORMAT, "version": 1, "device": device or device_name(),
        "arch": cfg.arch.name, "arch_hash": arch_hash(cfg.arch), "arch_fields":
        arch_fields(cfg.arch), "vocab_size": vocab, "seq_length": seq, "microbatch_size": micro,
        "microbatch_scaling": "none", "num_layers": cfg.arch.num_layers, "seconds": seconds,
        "optimizer_step": steps,
        "source": (f"Measured by `python -m rst.measure` on {device or device_name()} "
                   f"({runtime.device.type}, {runtime.precision}, "
                   f"{torch.get_num_threads()} threads, torch {torch.__version__}) on "
                   f"{datetime.date.today().isoformat()}; fastest of {repeats} repeats."),
        "notes": ["Random token ids; seconds per full microbatch; optimizer_step per step."],
    }


def write_table(table: dict, out_dir: str | Path | None = None) -> Path:
    """Write ``table`` as the next version of its key in ``out_dir`` (default rst/tables/)."""
    folder = Path(out_dir) if out_dir else TABLES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = (f"{table['device']}-{table['arch']}-{table['arch_hash'][:8]}-"
            f"mb{table['microbatch_size']}-L{table['seq_length']}")
    versions = [int(p.stem.rsplit("-v", 1)[1]) for p in table_files(folder)
                if p.parent == folder and p.stem.startswith(stem + "-v")
                and p.stem.rsplit("-v", 1)[1].isdigit()]
    table = {**table, "version": max(versions, default=0) + 1}
    path = folder / f"{stem}-v{table['version']}.json"
    path.write_text(json.dumps(table, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> Path:
    """Command line: overrides + ``--layers/--repeats/--vocab-size/--device-name/--out``."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default=None, help="comma-separated depths to measure")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=None)
    parser.add_argument("--device-name", default=None, help="table device (default: auto)")
    parser.add_argument("--out", default=None, help="folder (default: rst/tables/)")
    args, overrides = parser.parse_known_args(argv)
    cfg = load_pretrain_config(compose("pretrain", [*overrides, "budget_kind=steps"]))
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    table = measure(cfg, layers, args.repeats, args.vocab_size, args.device_name)
    path = write_table(table, args.out)
    print(path)
    return path


if __name__ == "__main__":
    main()
