"""Extract irreducible losses for RHO-Loss from a trained irreducible-loss (IL) model.

    python pretrain_bert.py name=il method=il_model ...        # IL model on the held-out split
    python -m efficient_training.extract_il_losses --model outputs/il/pretrain/<run> \\
        --out outputs/il/il_losses.npz [--batch-size 64] [--max-rows N]
    python pretrain_bert_rho_loss.py name=rho method.rho_loss.il_losses=outputs/il/il_losses.npz

NTNG's form works as typed: ``python efficient_training/extract_il_losses.py name=il_model
[base_dir=outputs]`` scores the newest ``il_model`` run and writes
``<base_dir>/il_model/il_losses.npz`` (pass that, or its folder, as NTNG's
``train.rho_loss.il_losses_path``).

Every row of the *training* split of the IL model's corpus (same data settings, so the same
cache and the same stable example ids) is masked once with a fixed seed and scored; the
per-example MLM losses are saved keyed by example id, with the data fingerprint, as
:class:`~efficient_training.rho_loss.IrreducibleLosses`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as a script (NTNG's form): the repository root must be importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from omegaconf import OmegaConf

from cramming.backend.checkpoint import find_model_folder, load_model_folder
from cramming.config import load_pretrain_config
from cramming.data import MLMMasker, prepare_data
from cramming.objectives.mlm import masking_generator
from efficient_training.rho_loss import IrreducibleLosses


@torch.no_grad()
def extract(model_path: str | Path, out: str | Path, batch_size: int = 64,
            base_dir: str | None = None, max_rows: int | None = None, seed: int = 0,
            progress: bool = True) -> Path:
    """Score the training split with the IL model at ``model_path``; write ``out``."""
    loaded = load_model_folder(find_model_folder(path=model_path))
    cfg = load_pretrain_config(OmegaConf.create(loaded.config))
    root = Path(base_dir or cfg.base_dir).expanduser().resolve() / "data"
    prepared = prepare_data(cfg.data, cache_root=root, progress=progress)
    masker = MLMMasker.from_tokenizer(prepared.tokenizer,
                                      mask_token_prob=cfg.train.mask_token_prob,
                                      random_token_prob=cfg.train.random_token_prob)
    data, model = prepared.train, loaded.model
    rows = len(data) if max_rows is None else min(max_rows, len(data))
    ids, losses = [], []
    for chunk, start in enumerate(range(0, rows, batch_size)):
        batch = data.batch(np.arange(start, min(start + batch_size, rows)))
        input_ids, labels = masker(batch["input_ids"], cfg.train.mask_prob,
                                   masking_generator(seed, chunk))
        outputs = model(input_ids, labels=labels, return_per_example_loss=True)
        ids.append(batch["example_ids"].numpy())
        losses.append(outputs["per_example_loss"].float().numpy())
    il = IrreducibleLosses(np.concatenate(ids), np.concatenate(losses), prepared.fingerprint)
    return il.save(out)


NTNG_KEYS = ("name", "base_dir", "seed")


def ntng_arguments(argv: list[str]) -> list[str]:
    """NTNG's ``name=<IL run> [base_dir=..] [seed=..]`` as our ``--model/--out`` options."""
    given = dict(arg.split("=", 1) for arg in argv)
    unknown = sorted(set(given) - set(NTNG_KEYS))
    if unknown or "name" not in given:
        raise SystemExit(f"error: extract_il_losses takes name=<IL model run> [base_dir=..] "
                         f"[seed=..] (NTNG's form) or --model/--out; got {' '.join(argv)}")
    base_dir = given.get("base_dir", "outputs")
    model = find_model_folder(base_dir=base_dir, name=given["name"])
    out = Path(base_dir) / given["name"] / "il_losses.npz"
    print(f"NTNG form: --model {model} --out {out}", file=sys.stderr)
    return ["--model", str(model), "--out", str(out), "--base-dir", base_dir,
            "--seed", given.get("seed", "0")]


def main(argv: list[str] | None = None) -> Path:
    """Command line; prints the written file."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and all("=" in arg and not arg.startswith("-") for arg in argv):
        argv = ntng_arguments(argv)
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="IL model folder or its run folder")
    parser.add_argument("--out", required=True, help="output .npz file")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--base-dir", default=None, help="where the data cache lives")
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="masking seed")
    args = parser.parse_args(argv)
    path = extract(args.model, args.out, args.batch_size, args.base_dir, args.max_rows,
                   args.seed)
    print(path)
    return path


if __name__ == "__main__":
    from cramming.cli import exit_on_error

    exit_on_error(main)
