"""Smoke tests of the benchmarks' building blocks on tiny sizes (no timing assertions)."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.common import PeakProbe, machine_tag, matmul_flops, result_path, summarize, write_result
from bench.flops import executed_flops_per_token, useful_flops_per_token
from bench.train_throughput import (
    MASK_ID,
    PEER,
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
    assert matmul_flops(size=32, repeats=2, inner=3) > 0
    bf16 = PeakProbe(size=32, repeats=1, dtype=torch.bfloat16)
    bf16.measure()
    assert bf16.as_dict()["dtype"] == "bf16" and bf16.as_dict()["device"] == "cpu"


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
    args = parse_args(TINY + ["--models", "crammed,crammed-mlp,hf-bert,eager-loop"])
    data = synthetic_corpus(tmp_path, 32, args.seq, args.vocab)
    assert data.input_ids.shape == (32, 16) and (data.input_ids[:, 0] == 2).all()
    masker = MLMMasker(args.vocab, MASK_ID, SPECIAL_IDS)
    fraction = predicted_fraction(data, masker, 0.25)
    assert 0.1 < fraction < 0.4
    for kind in args.models:
        contender = build_contender(kind, args, data, masker, fraction, tmp_path)
        assert contender.run(1) > 0 and contender.tokens() == args.batch * args.seq
        assert contender.useful_flops > 0 and not contender.compiled
        assert (contender.trainer is None) == (kind == "eager-loop")
        contender.close()
    # the plain loop reports its own data wait; a Trainer reports it once the engine does
    assert contender.data_wait_fraction is not None and 0 <= contender.data_wait_fraction < 1


def test_compile_contender_and_peer_options() -> None:
    args = parse_args(TINY + ["--models", "crammed,crammed-compile"])
    from bench.train_throughput import model_overrides

    assert "impl.compile=true" not in model_overrides("crammed", args)
    assert model_overrides("crammed-compile", args)[-1] == "impl.compile=true"


def test_peer_cramming_path_without_checkout_is_one_line_error(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(TINY + ["--peer-cramming", str(tmp_path)])
    message = str(exit_info.value.code)
    assert "no JonasGeiping/cramming checkout" in message and "\n" not in message
    with pytest.raises(SystemExit):
        parse_args(TINY + ["--models", PEER])


def fake_original_checkout(root: Path) -> Path:
    """A stand-in with the original's layout and import style (absolute + relative)."""
    package = root / "cramming"
    files = {
        "__init__.py": "raise ImportError('the package __init__ must not run')\n",
        "utils.py": "import module_that_does_not_exist  # noqa\n",
        "architectures/__init__.py": "from .construction import construct_model\n",
        "architectures/layers.py": "import torch\nLinear = torch.nn.Linear\n",
        "architectures/construction.py": textwrap.dedent("""\
            import torch
            import cramming.architectures.layers as layers
            from ..utils import is_main_process

            class TinyLM(torch.nn.Module):
                def __init__(self, cfg, vocab_size):
                    super().__init__()
                    self.embed = torch.nn.Embedding(vocab_size, cfg.hidden_size)
                    self.body = layers.Linear(cfg.hidden_size, cfg.hidden_size)
                    self.sparse_prediction = cfg.sparse_prediction

                def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
                    logits = self.body(self.embed(input_ids)) @ self.embed.weight.T
                    loss = torch.nn.functional.cross_entropy(
                        logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
                    return {"loss": loss, "outputs": logits}

            def construct_model(cfg_arch, vocab_size, downstream_classes=None):
                assert is_main_process()
                return TinyLM(cfg_arch, vocab_size)
            """),
        "config/arch/crammed-bert.yaml": textwrap.dedent("""\
            architectures: [ScriptableCrammedBERT]
            num_transformer_layers: 16
            hidden_size: 768
            intermed_size: 3072
            hidden_dropout_prob: 0.1
            sparse_prediction: ${train.objective.mlm_probability}
            embedding:
              max_seq_length: 128
              dropout_prob: 0.1
              embedding_dim: ${arch.hidden_size}
            attention:
              num_attention_heads: 12
              dropout_prob: 0.1
            """),
    }
    for name, text in files.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(text)
    return root


def test_cramming_original_is_imported_beside_ours(tmp_path) -> None:
    import cramming
    from bench.cramming_original import arch_config, build_original_model, load_original

    root = fake_original_checkout(tmp_path / "checkout")
    architectures = load_original(root / "cramming")  # PATH may name the package folder too
    assert sys.modules["cramming"] is cramming  # ours is back in place
    assert architectures.__name__ == "cramming_original.architectures"
    assert sys.modules["cramming_original.architectures.layers"].Linear is torch.nn.Linear
    assert str(root) not in sys.path
    shape = dict(layers=1, hidden=8, heads=2, intermed_size=16, seq=16, dropout=0.0,
                 mask_prob=0.25)
    cfg = arch_config(root, **shape)
    assert cfg.sparse_prediction == 0.25 and cfg.embedding.embedding_dim == 8
    model = build_original_model(root, 32, **shape)
    assert type(model).__module__ == "cramming_original.architectures.construction"
    ids = torch.randint(5, 32, (2, 16))
    assert model(ids, labels=ids)["loss"].isfinite()


def test_peer_cramming_contender_runs_in_the_plain_loop(tmp_path) -> None:
    root = fake_original_checkout(tmp_path / "checkout")
    args = parse_args(TINY + ["--models", "crammed", "--peer-cramming", str(root)])
    assert args.models == ["crammed", PEER]
    data = synthetic_corpus(tmp_path, 32, args.seq, args.vocab)
    masker = MLMMasker(args.vocab, MASK_ID, SPECIAL_IDS)
    contender = build_contender(PEER, args, data, masker, 0.25, tmp_path)
    assert contender.run(1) > 0 and contender.tokens() == args.batch * args.seq
    assert contender.executed_flops > 0 and contender.trainer is None


def test_gpu_check_cpu_fallback(tmp_path) -> None:
    """bench/gpu_check.sh end to end on the CPU at its tiny size (what the GPU run prints)."""
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["bash", str(repo / "bench" / "gpu_check.sh"), "--cpu", "--no-save",
                           "--json", str(out)], capture_output=True, text=True, env=env,
                          timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "== environment" in done.stdout and "MFU%" in done.stdout, done.stdout + done.stderr
    assert "goals (printed, not asserted)" in done.stdout and "DDP step: skipped" in done.stdout
    payload = json.loads(out.read_text())
    assert payload["device"] == "cpu" and not payload["failures"]
    results = {r["model"]: r for r in payload["results"]}
    assert set(results) == {"crammed", "hf-bert", "eager-loop"}
    assert all(r["tokens_per_second"]["median"] > 0 for r in results.values())
    assert results["crammed"]["speedup_vs_hf"] > 0 and payload["peak"]["dtype"] == "fp32"
    assert [g["status"] in ("PASS", "FAIL", "n/a") for g in payload["goals"]] == [True] * 3


def test_gated_activation_matches_unfused() -> None:
    for name in ("gelu", "silu", "relu"):
        x = torch.randn(3, 5, 8, dtype=torch.double, requires_grad=True)
        a, b = x.chunk(2, dim=-1)
        reference = getattr(torch.nn.functional, name)(a) * b
        assert torch.autograd.gradcheck(lambda t, n=name: gated_activation(t, n), (x,))
        assert np.allclose(gated_activation(x, name).detach(), reference.detach())
