"""The GPT-BERT hybrid on N processes (torchrun, gloo) against the one-process mix.

With as many ranks as the ratio's denominator, rank r reads global microbatch
``a * N + r`` and trains the kind the one-process mix gives that microbatch
(``(a * N + r) % N < numerator``), with the same rows and keyed masks. So the two must
log the same per-kind losses, accuracies and mask rate at every step and end with the
same weights, through the engine's real multi-process path.
"""

from __future__ import annotations

import pytest

from cramming.backend.checkpoint import load_model_folder
from cramming.backend.metrics import read_jsonl
from cramming.config import compose, load_pretrain_config
from cramming.pretrain import run_pretraining
from tests.test_distributed import NO_DROPOUT, worker

LOGGED = ("loss", "loss_mlm", "loss_clm", "accuracy", "accuracy_mlm", "accuracy_clm",
          "mask_rate")


def hybrid_overrides(tiny_overrides: list[str], ratio: tuple[int, int], batch: int,
                     *extra: str) -> list[str]:
    return [*tiny_overrides, *NO_DROPOUT, "arch=ltg-bert-tiny", "budget=4",
            "train.objective=hybrid", f"train.hybrid_numerator={ratio[0]}",
            f"train.hybrid_denominator={ratio[1]}", "train.mask_span_length=3",
            "train.exact_mask_count=false", "train.mask_prob=0.3", "impl.microbatch_size=4",
            f"train.batch_size={batch}", "train.validate_at_end=false", "train.optim.lr=1e-2",
            "train.scheduler=constant", "train.warmup=0", *extra]


@pytest.mark.parametrize("processes, ratio, extra", [
    (2, (1, 2), ()),
    (4, (1, 4), ("train.token_weighted_loss=true",)),
])
def test_rank_split_logs_per_kind_like_the_one_process_mix(tiny_overrides, tmp_path,
                                                           processes, ratio, extra):
    overrides = hybrid_overrides(tiny_overrides, ratio, 4 * processes, *extra)
    run_pretraining(load_pretrain_config(compose("pretrain", overrides)), tmp_path / "one")
    worker(tmp_path / "ranks", overrides, processes=processes)
    single = read_jsonl(tmp_path / "one" / "metrics.jsonl")
    split = read_jsonl(tmp_path / "ranks" / "metrics.jsonl")
    assert len(single) == len(split) == 4
    for one, ranks in zip(single, split):
        for key in LOGGED:
            assert ranks[key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
        assert one["loss_mlm"] != one["loss_clm"] and one["mask_rate"] > 0.3
        if not extra:  # equal microbatch weights: the loss is the mean of the two kinds'
            share = ratio[0] / ratio[1]
            assert one["loss"] == pytest.approx(share * one["loss_mlm"]
                                                + (1 - share) * one["loss_clm"], rel=1e-5)
    for kind in ("mlm", "clm"):  # logged, not a constant: some step predicts some tokens
        assert max(r[f"accuracy_{kind}"] for r in single) > 0, kind
    weights = [load_model_folder(tmp_path / run / "model").model.state_dict()
               for run in ("one", "ranks")]
    for name, value in weights[0].items():
        assert (value - weights[1][name]).abs().mean() < 1e-5, name
