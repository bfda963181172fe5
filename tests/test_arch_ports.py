"""Ported reference weights reproduce the originals' outputs (fixtures in shared/reference)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cramming.architectures import IGNORE_INDEX, build_model
from cramming.architectures.ports import (
    CRAMMING_CLASSIFIER_PREFIXES,
    cramming_arch,
    gpt_bert_arch,
    port_cramming_state_dict,
    port_gpt_bert_state_dict,
)
from cramming.errors import ConfigError

ATOL = 1e-5


def load_reference(folder: Path):
    config = json.loads((folder / "config.json").read_text())
    return config, load_file(folder / "weights.safetensors"), load_file(folder / "io.safetensors")


def cramming_model(config: dict, weights: dict):
    arch = cramming_arch(config)
    model = build_model(arch, vocab_size=config["embedding"]["vocab_size"],
                        pad_token_id=config["embedding"]["pad_token_id"]).eval()
    ported = port_cramming_state_dict(weights, arch)
    model.load_state_dict(ported.model, strict=True)
    return model, ported


def test_cramming_crammed_bert_port_matches_reference(shared_reference: Path):
    config, weights, io = load_reference(shared_reference / "cramming-crammed-bert-tiny")
    model, ported = cramming_model(config, weights)
    assert ported.extra == {}
    assert model.decoder.weight is model.embeddings.word.weight  # still tied after loading
    with torch.no_grad():
        hidden = model.encode(io["input_ids"])
        torch.testing.assert_close(hidden, io["hidden_states"], atol=ATOL, rtol=0)
        torch.testing.assert_close(model.predict(hidden), io["logits_all"], atol=ATOL, rtol=0)
        out = model(io["input_ids"], io["labels"])
    assert int(out["num_predictions"]) == int((io["labels"] != IGNORE_INDEX).sum())
    torch.testing.assert_close(out["logits"], io["logits_masked"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out["loss"].reshape(1), io["mlm_loss"], atol=ATOL, rtol=0)


def test_cramming_classifier_keys_are_returned_apart(shared_reference: Path):
    """The encoder ports as for pretraining; the pooler/head tensors come back in ``extra``
    and, applied as Cramming's GLUE_sane head does, give the reference logits."""
    config, weights, io = load_reference(shared_reference / "cramming-classifier-tiny")
    model, ported = cramming_model(config, weights)
    assert ported.extra and all(k.startswith(CRAMMING_CLASSIFIER_PREFIXES) for k in ported.extra)
    assert not any(k.startswith(CRAMMING_CLASSIFIER_PREFIXES) for k in ported.model)
    extra = ported.extra
    with torch.no_grad():
        hidden = model.encode(io["input_ids"], io["attention_mask"])
        pooled = torch.tanh(torch.nn.functional.linear(
            hidden[:, 0], extra["pooler.dense.weight"], extra["pooler.dense.bias"]))
        logits = torch.nn.functional.linear(pooled, extra["head.weight"], extra["head.bias"])
    torch.testing.assert_close(logits, io["logits"], atol=ATOL, rtol=0)


def test_cramming_port_refuses_what_it_cannot_map(shared_reference: Path):
    config, weights, _ = load_reference(shared_reference / "cramming-crammed-bert-tiny")
    arch = cramming_arch(config)
    with pytest.raises(ConfigError, match="no counterpart"):
        port_cramming_state_dict({**weights, "encoder.layers.0.attn.extra": torch.zeros(1)}, arch)
    untied = {**weights, "decoder.weight": weights["decoder.weight"] + 1}
    with pytest.raises(ConfigError, match="not tied"):
        port_cramming_state_dict(untied, arch)
    with pytest.raises(ConfigError, match="nonlin"):
        cramming_arch({**config, "nonlin": "GELU"})


GPT_BERT_FIXTURES = [("gpt-bert-extra-tiny", True), ("gpt-bert-ltg-tiny", False)]


@pytest.mark.parametrize("folder, extra", GPT_BERT_FIXTURES)
@pytest.mark.parametrize("mode", ["bidirectional", "causal"])
def test_gpt_bert_port_matches_reference(shared_reference: Path, folder, extra, mode):
    config, weights, io = load_reference(shared_reference / folder)
    arch = gpt_bert_arch(config, extra=extra)
    model = build_model(arch, vocab_size=config["vocab_size"]).eval()
    ported = port_gpt_bert_state_dict(weights, arch)
    assert ported.extra == {}
    model.load_state_dict(ported.model, strict=True)
    ids, labels, blocked = io["input_ids"], io["labels"], io[f"{mode}_blocked"]
    causal = mode == "causal"
    length = ids.shape[1]
    # The fixture's mask is exactly key padding (none here) plus, in causal mode, the future.
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    padding = blocked[:, -1, :]  # the last query sees every real key in both modes
    assert torch.equal(blocked, padding[:, None, :] | (future & causal))
    with torch.no_grad():
        hidden = model.encode(ids, attention_mask=(~padding).long(), causal=causal)
        out = model(ids, labels, attention_mask=(~padding).long(), causal=causal)
        # The reference decodes sequence-first (position-major, then batch).
        seq_first = hidden.transpose(0, 1)[labels.T != IGNORE_INDEX]
        logits = model.predict(seq_first)
    torch.testing.assert_close(hidden, io[f"{mode}_hidden_states"], atol=ATOL, rtol=0)
    torch.testing.assert_close(logits, io[f"{mode}_logits_masked_seqfirst"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out["loss"].reshape(1), io[f"{mode}_loss"], atol=ATOL, rtol=0)
