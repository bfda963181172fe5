"""Smoke tests of the benchmarks' building blocks on tiny sizes (no timing assertions)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch

from bench.common import PeakProbe, machine_tag, matmul_flops, result_path, summarize, write_result
from bench.flops import executed_flops_per_token, useful_flops_per_token
from bench.train_throughput import (
    MASK_ID,
    SPECIAL_IDS,
    build_contender,
    parse_args,
    predicted_fraction,
    synthetic_corpus,
)
from cramming.architectures import build_model
from cramming.architectures.components import gated_activation
from cramming.config import compose, load_pretrain_config
from cramming.data import MLMMasker

TINY = ["--layers", "1", "--hidden", "32", "--heads", "2", "--intermediate", "32", "--seq", "16",
        "--vocab", "64", "--batch", "4", "--microbatch", "2"]


def test_matmul_probe_and_stats() -> None:
    assert matmul_flops(size=32, repeats=2) > 0
    probe = PeakProbe(size=32, repeats=1)
    probe.measure()
    probe.measure()
    assert probe.peak == max(probe.samples) and len(probe.as_dict()["probes"]) == 2
    stats = summarize([1.0, 2.0, 3.0])
    assert stats["median"] == 2.0 and stats["spread"] == 1.0


def test_result_path_names_the_machine(tmp_path) -> None:
    info = {"hostname": "host 1", "cpu": "AMD EPYC 7B13", "cuda": None, "torch": "2.0+cpu",
            "torch_threads": 2}
    assert machine_tag(info) == "host-1_AMD-EPYC-7B13_torch2.0+cpu_2t"
    assert result_path("x", info, "lbl").name == "x_lbl_host-1_AMD-EPYC-7B13_torch2.0+cpu_2t.json"
    path = write_result(tmp_path / "r.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}


def test_useful_flops_count_the_sparse_head_for_both_models() -> None:
    ours = load_pretrain_config(compose("pretrain", ["arch=bert-tiny"])).arch
    hf = load_pretrain_config(compose("pretrain", ["arch=hf-bert-tiny"])).arch
    with torch.device("meta"):
        ours_model = build_model(ours, vocab_size=1000)
        hf_model = build_model(hf, vocab_size=1000)
    # HF decodes densely: it executes more than an ideal implementation needs.
    assert executed_flops_per_token(hf_model, 128, 0.15) > useful_flops_per_token(hf_model, 128,
                                                                                  0.15)
    assert executed_flops_per_token(ours_model, 128, 0.15) == useful_flops_per_token(
        ours_model, 128, 0.15)
    # Same arch with the other structure: useful FLOPs grow with the predicted fraction.
    assert useful_flops_per_token(hf_model, 128, 0.5) > useful_flops_per_token(hf_model, 128, 0.1)
    dense = dataclasses.replace(ours, sparse_prediction=False)
    with torch.device("meta"):
        dense_model = build_model(dense, vocab_size=1000)
    assert useful_flops_per_token(dense_model, 128, 0.15) == useful_flops_per_token(
        ours_model, 128, 0.15)


def test_train_step_contenders_run(tmp_path) -> None:
    args = parse_args(TINY + ["--models", "crammed,crammed-mlp,hf-bert"])
    data = synthetic_corpus(tmp_path, 32, args.seq, args.vocab)
    assert data.input_ids.shape == (32, 16) and (data.input_ids[:, 0] == 2).all()
    masker = MLMMasker(args.vocab, MASK_ID, SPECIAL_IDS)
    fraction = predicted_fraction(data, masker, 0.25)
    assert 0.1 < fraction < 0.4
    for kind in args.models:
        contender = build_contender(kind, args, data, masker, fraction, tmp_path)
        assert contender.run(1) > 0 and contender.trainer.tokens == args.batch * args.seq
        assert contender.useful_flops > 0


def test_gated_activation_matches_unfused() -> None:
    for name in ("gelu", "silu", "relu"):
        x = torch.randn(3, 5, 8, dtype=torch.double, requires_grad=True)
        a, b = x.chunk(2, dim=-1)
        reference = getattr(torch.nn.functional, name)(a) * b
        assert torch.autograd.gradcheck(lambda t, n=name: gated_activation(t, n), (x,))
        assert np.allclose(gated_activation(x, name).detach(), reference.detach())
