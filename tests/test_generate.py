"""Generation from causal checkpoints: greedy, top-k, temperature, seeds, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from cramming.architectures import build_model
from cramming.backend.checkpoint import save_model_folder
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import GenerateConfig
from cramming.data import prepare_data
from cramming.generation import generate, generate_text, next_token_logits
from cramming.pretrain import data_cache_root
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def model_folder(tiny_overrides, tmp_path_factory):
    cfg = load_pretrain_config(compose("pretrain", [*tiny_overrides, "arch=gpt-tiny",
                                                    "train.objective=clm"]))
    tokenizer = prepare_data(cfg.data, data_cache_root(cfg), progress=False).tokenizer
    torch.manual_seed(0)
    model = build_model(cfg.arch, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("gen") / "model"
    return save_model_folder(folder, model, tokenizer, {"train": {"objective": "clm"}})


def tiny_gpt():
    from omegaconf import OmegaConf

    from cramming.config import CONFIG_DIR, to_typed
    from cramming.config.schema import ArchConfig

    torch.manual_seed(0)
    arch = to_typed(OmegaConf.load(CONFIG_DIR / "arch" / "gpt-tiny.yaml"), ArchConfig)
    return build_model(arch, vocab_size=100).eval()


def test_greedy_is_repeated_argmax_and_top_k_one_is_greedy():
    model, prompt = tiny_gpt(), torch.tensor([[1, 5, 9, 11]])
    out = generate(model, prompt, 6, temperature=0)
    ids = prompt
    for _ in range(6):
        ids = torch.cat([ids, next_token_logits(model, ids).argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, ids)
    assert torch.equal(generate(model, prompt, 6, temperature=1.0, top_k=1, seed=3), out)


def test_sampling_is_deterministic_per_seed_and_respects_top_k():
    model, prompt = tiny_gpt(), torch.tensor([[1, 5, 9, 11]] * 3)
    first = generate(model, prompt, 12, temperature=1.5, top_k=20, seed=7)
    assert torch.equal(first, generate(model, prompt, 12, temperature=1.5, top_k=20, seed=7))
    assert not torch.equal(first, generate(model, prompt, 12, temperature=1.5, top_k=20, seed=8))
    # every sampled token is among the 20 most likely given its prefix
    for row in range(3):
        for t in range(4, 16):
            logits = next_token_logits(model, first[row:row + 1, :t])
            assert first[row, t] in logits.topk(20).indices


def test_stops_at_document_end():
    model, prompt = tiny_gpt(), torch.tensor([[1, 5]])
    greedy = generate(model, prompt, 5, temperature=0)
    stop = int(greedy[0, 3])  # the second generated token
    stopped = generate(model, prompt, 5, temperature=0, stop_token_id=stop)
    assert stopped.shape[1] <= 4 and int(stopped[0, -1]) == stop


def test_generate_cli_matches_the_library(model_folder):
    args = [f"model_path={model_folder}", "prompt=the city of", "max_new_tokens=8",
            "temperature=0.9", "top_k=10", "seed=4", "stop_at_document_end=false"]
    expected = generate_text(GenerateConfig(model_path=str(model_folder), prompt="the city of",
                                            max_new_tokens=8, temperature=0.9, top_k=10, seed=4,
                                            stop_at_document_end=False))
    result = subprocess.run([sys.executable, "generate.py", *args], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"---\nthe city of {expected[0]}".strip()
    assert len(expected[0].split()) >= 1


def test_generate_cli_rejects_an_encoder(tmp_path, tiny_overrides):
    cfg = load_pretrain_config(compose("pretrain", tiny_overrides))
    tokenizer = prepare_data(cfg.data, data_cache_root(cfg), progress=False).tokenizer
    model = build_model(cfg.arch, vocab_size=len(tokenizer))
    folder = save_model_folder(tmp_path / "model", model, tokenizer)
    result = subprocess.run([sys.executable, "generate.py", f"model_path={folder}", "prompt=x"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "cannot attend causally" in result.stderr
