"""Export round trip: transformers loads the folder and gives our model's logits."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from cramming.architectures import build_model
from cramming.backend.checkpoint import save_model_folder
from cramming.config import CONFIG_DIR, to_typed
from cramming.config.schema import ArchConfig
from cramming.evaluation.heads import TaskModel
from cramming.export import export_model, main, source_files

ATOL = 1e-5
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {token: i for i, token in enumerate(SPECIALS + [f"w{i}" for i in range(120)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny(name: str, tokenizer) -> torch.nn.Module:
    arch = to_typed(OmegaConf.load(CONFIG_DIR / "arch" / f"{name}.yaml"), ArchConfig)
    torch.manual_seed(0)
    model = build_model(arch, vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():  # move 1-d parameters off their init so a dropped one shows
        for parameter in model.parameters():
            if parameter.ndim == 1:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def padded_batch(tokenizer):
    texts = ["w1 w2 w3 w4 w5 w6 w7 w8 w9 w10", "w11 w12 w13"]
    return tokenizer(texts, padding=True, return_tensors="pt")


@pytest.mark.parametrize("arch", ["bert-tiny", "hf-bert-tiny", "ltg-bert-tiny", "gpt-tiny",
                                  "llama-tiny"])
def test_every_family_round_trips_through_transformers(arch, tmp_path):
    tokenizer = word_tokenizer()
    model = tiny(arch, tokenizer)
    out = export_model(model, tokenizer, tmp_path / "hf")
    auto = AutoModelForCausalLM if model.arch.causal else AutoModelForMaskedLM
    loaded = auto.from_pretrained(str(out), trust_remote_code=True).eval()
    assert type(loaded.model).__module__.startswith("_cramming_export_")  # the shipped code
    batch = padded_batch(AutoTokenizer.from_pretrained(str(out)))
    assert batch["input_ids"].tolist() == padded_batch(tokenizer)["input_ids"].tolist()
    with torch.no_grad():
        ours = model.predict(model.encode(batch["input_ids"], batch["attention_mask"]))
        theirs = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(theirs.logits[real], ours[real], atol=ATOL, rtol=0)
    labels = batch["input_ids"].masked_fill(~real, -100)
    assert torch.isfinite(loaded(**batch, labels=labels).loss)


def test_sequence_classifier_and_cli_from_a_run_folder(tmp_path):
    tokenizer = word_tokenizer()
    encoder = tiny("bert-tiny", tokenizer)
    run = tmp_path / "run1" / "pretrain" / "2024-01-01_00-00-00"
    save_model_folder(run / "model", encoder, tokenizer, {"arch": {"name": "bert-tiny"}})
    assert main([str(run), str(tmp_path / "mlm")]) == 0
    config = json.loads((tmp_path / "mlm" / "config.json").read_text())
    assert config["architectures"] == ["CrammingForMaskedLM"]
    assert main([str(tmp_path / "nothing"), str(tmp_path / "x")]) == 1

    torch.manual_seed(1)
    head = TaskModel(encoder, 3, pooler="zero_index", head_dim=48).eval()
    out = export_model(encoder, tokenizer, tmp_path / "cls", head=head)
    loaded = AutoModelForSequenceClassification.from_pretrained(
        str(out), trust_remote_code=True).eval()
    batch = padded_batch(tokenizer)
    with torch.no_grad():
        ours = head(batch["input_ids"], batch["attention_mask"])
        theirs = loaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    torch.testing.assert_close(theirs.logits, ours, atol=ATOL, rtol=0)


def test_folder_loads_without_cramming(tmp_path):
    """A fresh process that never imports cramming: the folder carries the model code."""
    tokenizer = word_tokenizer()
    model = tiny("bert-tiny", tokenizer)
    out = export_model(model, tokenizer, tmp_path / "hf")
    ids = padded_batch(tokenizer)["input_ids"]
    with torch.no_grad():
        expected = model.predict(model.encode(ids, (ids != 0).long()))
    torch.save({"ids": ids, "logits": expected}, tmp_path / "expected.pt")
    script = f"""
import sys, torch
from transformers import AutoModelForMaskedLM
data = torch.load({str(tmp_path / 'expected.pt')!r})
model = AutoModelForMaskedLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
with torch.no_grad():
    logits = model(input_ids=data["ids"], attention_mask=(data["ids"] != 0).long()).logits
assert not any(m == "cramming" or m.startswith("cramming.") for m in sys.modules), "imported"
print((logits - data["logits"]).abs().max().item())
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "modules")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.strip().splitlines()[-1]) <= ATOL


def test_shipped_sources_follow_the_imports():
    files = source_files()
    assert "architectures/__init__.py" in files and "config/schema.py" in files
    assert "errors.py" in files and "__init__.py" in files
    assert not any(key.startswith(("evaluation/", "backend/")) for key in files)
    assert all(Path(key).suffix == ".py" for key in files)
