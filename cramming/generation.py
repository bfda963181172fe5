"""Sampling continuations from causal checkpoints: greedy, temperature and top-k.

``python generate.py name=<run> prompt="..."`` reaches :func:`main`.

No key/value cache: each new token re-encodes the (at most ``max_seq_length``) last
tokens, which is plenty for eyeballing small checkpoints on a CPU.
"""

from __future__ import annotations

import sys

import torch
from omegaconf import DictConfig, OmegaConf

from cramming.architectures.transformer import TransformerLM
from cramming.backend.checkpoint import find_model_folder, load_model_folder
from cramming.config import to_typed
from cramming.config.checks import CAUSAL_CAPABLE
from cramming.config.schema import GenerateConfig
from cramming.errors import ConfigError, CrammingError


def next_token_logits(model: TransformerLM, ids: torch.Tensor) -> torch.Tensor:
    """Logits [B, V] for the token after ``ids`` [B, L] (causal attention, last window)."""
    window = ids[:, -model.arch.max_seq_length:]
    hidden = model.encode(window, causal=True)
    return model.predict(hidden[:, -1]).float()


def sample_token(logits: torch.Tensor, temperature: float, top_k: int | None,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Next token ids [B]: argmax for ``temperature == 0``, else sampled from the top-k."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        threshold = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def generate(model: TransformerLM, ids: torch.Tensor, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, seed: int | None = 0,
             stop_token_id: int | None = None) -> torch.Tensor:
    """Append up to ``max_new_tokens`` tokens to ``ids`` [B, L]; returns [B, L + n].

    Sampling draws from a generator seeded with ``seed``, so equal seeds give equal text.
    Generation stops early once every row has produced ``stop_token_id``.
    """
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    for _ in range(max_new_tokens):
        token = sample_token(next_token_logits(model, ids), temperature, top_k, generator)
        if stop_token_id is not None:
            token = token.masked_fill(finished, stop_token_id)
            finished |= token == stop_token_id
        ids = torch.cat([ids, token[:, None]], dim=1)
        if stop_token_id is not None and bool(finished.all()):
            break
    model.train(was_training)
    return ids


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` as training rows start: ``[CLS]`` then the text's tokens."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    start = [tokenizer.cls_token_id] if tokenizer.cls_token_id is not None else []
    return start + list(ids)


def generate_text(cfg: GenerateConfig) -> list[str]:
    """Load the selected model folder and return ``cfg.num_samples`` continuations."""
    if cfg.max_new_tokens < 1 or cfg.num_samples < 1:
        raise ConfigError("max_new_tokens and num_samples must be >= 1.")
    if cfg.temperature < 0:
        raise ConfigError(f"temperature={cfg.temperature} must be >= 0 (0 = greedy).")
    folder = find_model_folder(cfg.base_dir, cfg.name, cfg.model_path)
    loaded = load_model_folder(folder, device=cfg.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    if not isinstance(model, TransformerLM) or loaded.arch.model_type not in CAUSAL_CAPABLE:
        raise ConfigError(f"{folder} holds a {loaded.arch.model_type} model, which cannot "
                          "attend causally; generate from a gpt, llama or ltg-bert checkpoint.")
    ids = torch.tensor([prompt_ids(tokenizer, cfg.prompt)] * cfg.num_samples,
                       device=cfg.device)
    stop = tokenizer.sep_token_id if cfg.stop_at_document_end else None
    out = generate(model, ids, cfg.max_new_tokens, temperature=cfg.temperature,
                   top_k=cfg.top_k, seed=cfg.seed, stop_token_id=stop)
    texts = [tokenizer.decode(row[ids.shape[1]:].tolist(), skip_special_tokens=True)
             for row in out]
    return texts


def main(raw_cfg: DictConfig) -> list[str]:
    """Entry of generate.py: print the prompt and each continuation."""
    try:
        cfg = OmegaConf.masked_copy(raw_cfg, [k for k in raw_cfg.keys() if k != "hydra"])
        typed = to_typed(cfg, GenerateConfig)
        texts = generate_text(typed)
    except CrammingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for number, text in enumerate(texts):
        header = f"--- sample {number}" if len(texts) > 1 else "---"
        print(f"{header}\n{typed.prompt}{' ' if typed.prompt else ''}{text}")
    return texts
