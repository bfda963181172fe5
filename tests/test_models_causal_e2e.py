"""Tiny end-to-end runs through run_pretraining: gpt and llama (CLM), GPT-BERT hybrid."""

from __future__ import annotations

import json

import pytest
import torch

from cramming.backend.checkpoint import load_model_folder
from cramming.backend.metrics import read_jsonl
from cramming.config import compose, load_pretrain_config
from cramming.config.schema import DataConfig, ImplConfig, ValidateConfig
from cramming.pretrain import run_pretraining
from cramming.validate import validate_model

FAST = ["impl.threads=1", "budget=30", "train.optim.lr=3e-3", "train.scheduler=constant",
        "train.warmup=0"]


def config(overrides, *extra):
    return load_pretrain_config(compose("pretrain", [*overrides, *FAST, *extra]))


def assert_loss_falls(records: list[dict], key: str = "loss") -> None:
    curve = [r[key] for r in records]
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.5, curve


def test_gpt_clm_run_learns_and_reports_perplexity(tiny_overrides, tmp_path):
    summary = run_pretraining(config(tiny_overrides, "arch=gpt-tiny", "train.objective=clm"),
                              tmp_path)
    assert summary["steps"] == 30
    assert_loss_falls(read_jsonl(tmp_path / "metrics.jsonl"))
    scores = json.loads((tmp_path / "validation.jsonl").read_text().splitlines()[0])
    assert scores["objective"] == "clm" and scores["loss"] == scores["clm_loss"]
    assert scores["perplexity"] == pytest.approx(torch.tensor(scores["loss"]).exp().item(),
                                                 rel=1e-4)
    assert scores["loss"] < 7.0  # log(2000) = 7.6 at initialisation


def test_llama_clm_with_document_mask_z_loss_and_seq_length_schedule(tiny_overrides, tmp_path):
    cfg = config(tiny_overrides, "arch=llama-tiny", "train.objective=clm",
                 "train.document_mask=true", "train.z_loss=1e-4",
                 "train.seq_length_schedule=[[0,16],[0.5,64]]")
    run_pretraining(cfg, tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert_loss_falls(records)
    assert [r["seq_length"] for r in records[:15]] == [16] * 15
    assert records[-1]["seq_length"] == 64
    assert records[0]["tokens"] == records[-1]["tokens"] / 30  # same tokens every step
    loaded = load_model_folder(tmp_path / "model")
    assert loaded.arch.model_type == "llama" and loaded.arch.num_kv_heads == 2


def test_hybrid_gpt_bert_run_logs_both_losses_keeps_ema_and_validates(tiny_overrides,
                                                                      tmp_path):
    cfg = config(tiny_overrides, "arch=ltg-bert-tiny", "train.objective=hybrid",
                 "train.hybrid_numerator=1", "train.hybrid_denominator=4",
                 "train.batch_size=32", "train.ema_decay=0.9", "train.mask_span_length=3")
    run_pretraining(cfg, tmp_path)
    records = read_jsonl(tmp_path / "metrics.jsonl")
    assert_loss_falls(records)
    assert all("loss_mlm" in r and "loss_clm" in r for r in records)
    assert records[0]["mntp_share"] == 0.25
    scores = json.loads((tmp_path / "validation.jsonl").read_text().splitlines()[0])
    for key in ("mlm_loss", "mlm_accuracy", "mlm_perplexity", "clm_loss", "clm_accuracy",
                "clm_perplexity"):
        assert key in scores, key
    assert scores["loss"] == scores["mlm_loss"] and scores["clm_loss"] < 7.0
    ema = load_model_folder(tmp_path / "model-ema")
    final = load_model_folder(tmp_path / "model")
    assert not torch.equal(ema.model.embeddings.word.weight, final.model.embeddings.word.weight)
    impl = ImplConfig(device="cpu", progress_bar=False, threads=1)
    for folder in (tmp_path / "model", tmp_path / "model-ema"):
        result = validate_model(ValidateConfig(model_path=str(folder), impl=impl,
                                               max_batches=2, base_dir=cfg.base_dir,
                                               data=DataConfig(**vars(cfg.data))))
        assert result["objective"] == "hybrid" and result["clm_loss"] < 7.5
        assert result["mlm_masked_tokens"] > 0
