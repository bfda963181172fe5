"""Extract irreducible losses for RHO-Loss from a trained irreducible-loss (IL) model.

    python pretrain_bert.py name=il method=il_model ...        # IL model on the held-out split
    python -m efficient_training.extract_il_losses --model outputs/il/pretrain/<run> \\
        --out outputs/il/il_losses.npz [--batch-size 64] [--max-rows N]
    python pretrain_bert_rho_loss.py name=rho method.rho_loss.il_losses=outputs/il/il_losses.npz

Every row of the *training* split of the IL model's corpus (same data settings, so the same
cache and the same stable example ids) is masked once with a fixed seed and scored; the
per-example MLM losses are saved keyed by example id, with the data fingerprint, as
:class:`~efficient_training.rho_loss.IrreducibleLosses`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def main(argv: list[str] | None = None) -> Path:
    """Command line; prints the written file."""
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
    main()
