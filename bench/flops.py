"""Print parameters and analytic training FLOPs of the arch configs.

Usage, from the repo root::

    python -m bench.flops [names...] [--vocab V] [--seq S] [--predicted P]

Default: every YAML in cramming/config/arch. Models are built on the meta device, so even
the large ones cost no memory. See :mod:`cramming.architectures.flops` for the formula.
"""

from __future__ import annotations

import argparse
import dataclasses

import torch
from omegaconf import OmegaConf

from cramming.architectures import MaskedLMModel, build_model, training_flops_per_token
from cramming.architectures.hf_bert import HF_STRUCTURE
from cramming.config import CONFIG_DIR, to_typed
from cramming.config.schema import ArchConfig


def structural_arch(model: MaskedLMModel) -> ArchConfig:
    """The arch as actually built (HF BERT's fixed structure replaces our options)."""
    if model.arch.model_type == "hf-bert":
        return dataclasses.replace(model.arch, **HF_STRUCTURE)
    return model.arch


def useful_flops_per_token(model: MaskedLMModel, seq_length: int, predicted_fraction: float
                           ) -> float:
    """Training FLOPs per token an ideal implementation of ``model``'s architecture needs.

    The same definition for every model: all matmuls of the body and attention, and the
    prediction head + decoder only on the ``predicted_fraction`` of tokens that carry a label.
    """
    arch = dataclasses.replace(structural_arch(model), sparse_prediction=True)
    return training_flops_per_token(arch, model.vocab_size, seq_length, predicted_fraction)


def executed_flops_per_token(model: MaskedLMModel, seq_length: int, predicted_fraction: float
                             ) -> float:
    """Training FLOPs per token the implementation runs (dense decoding counts every token)."""
    return training_flops_per_token(structural_arch(model), model.vocab_size, seq_length,
                                    predicted_fraction)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="arch config names (default: all)")
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--seq", type=int, default=128, help="sequence length")
    parser.add_argument(
        "--predicted",
        type=float,
        default=0.25,
        help="fraction of tokens with an MLM label (sparse prediction)",
    )
    args = parser.parse_args()
    paths = sorted((CONFIG_DIR / "arch").glob("*.yaml"))
    if args.names:
        paths = [p for p in paths if p.stem in args.names]
    print(f"{'arch':<14} {'params':>9} {'non-emb':>9} {'GFLOP/token':>12} {'6N ratio':>9}")
    for path in paths:
        arch = to_typed(OmegaConf.load(path), ArchConfig)
        with torch.device("meta"):
            model = build_model(arch, vocab_size=args.vocab)
        params = model.num_parameters()
        flops = model.flops_per_token(args.seq, args.predicted)
        print(
            f"{arch.name:<14} {params / 1e6:8.1f}M "
            f"{model.num_parameters(exclude_embeddings=True) / 1e6:8.1f}M "
            f"{flops / 1e9:12.3f} {flops / (6 * params):9.2f}"
        )


if __name__ == "__main__":
    main()
