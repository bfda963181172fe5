"""Cross-field checks: combinations that are impossible, caught before any work starts."""

from __future__ import annotations

from cramming.config.schema import PretrainConfig
from cramming.errors import ConfigError


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """Raise ConfigError naming the offending keys for any inconsistent setting."""
    arch, data, train, impl = cfg.arch, cfg.data, cfg.train, cfg.impl
    _require(cfg.budget > 0, f"budget={cfg.budget} must be > 0 ({cfg.budget_kind}).")
    _require(str(cfg.resume).lower() in ("true", "false", "auto"),
             f"resume={cfg.resume!r}: allowed values are true, false, auto.")
    _require(impl.microbatch_size > 0, "impl.microbatch_size must be > 0.")
    _require(impl.microbatch_size <= train.batch_size,
             f"impl.microbatch_size={impl.microbatch_size} is larger than "
             f"train.batch_size={train.batch_size}; lower the microbatch or raise the batch.")
    _require(train.batch_size % impl.microbatch_size == 0,
             f"train.batch_size={train.batch_size} must be a multiple of "
             f"impl.microbatch_size={impl.microbatch_size}.")
    _require(0 < train.mask_prob < 1, f"train.mask_prob={train.mask_prob} must be in (0, 1).")
    if train.mask_prob_end is not None:
        _require(0 < train.mask_prob_end < 1,
                 f"train.mask_prob_end={train.mask_prob_end} must be in (0, 1).")
    _require(train.mask_token_prob >= 0 and train.random_token_prob >= 0
             and train.mask_token_prob + train.random_token_prob <= 1,
             "train.mask_token_prob + train.random_token_prob must lie in [0, 1].")
    for key in ("warmup", "cooldown", "batch_size_ramp", "min_lr_ratio"):
        value = getattr(train, key)
        _require(0 <= value <= 1, f"train.{key}={value} must be in [0, 1].")
    _require(train.optim.lr > 0, f"train.optim.lr={train.optim.lr} must be > 0.")
    _require(len(train.optim.betas) == 2, "train.optim.betas needs two values, e.g. [0.9,0.98].")
    _require(train.log_every_steps >= 1, "train.log_every_steps must be >= 1.")
    _require(arch.hidden_size % arch.num_heads == 0,
             f"arch.hidden_size={arch.hidden_size} is not divisible by "
             f"arch.num_heads={arch.num_heads}.")
    _require(data.seq_length <= arch.max_seq_length,
             f"data.seq_length={data.seq_length} exceeds arch.max_seq_length="
             f"{arch.max_seq_length}; raise arch.max_seq_length or shorten the sequences.")
    _require(data.seq_length >= 8, f"data.seq_length={data.seq_length} is too short (>= 8).")
    _require(0 <= data.val_fraction < 0.5,
             f"data.val_fraction={data.val_fraction} must be in [0, 0.5).")
    if arch.fixed_masked_fraction is not None:
        _require(arch.sparse_prediction,
                 "arch.fixed_masked_fraction needs arch.sparse_prediction=true.")
        _require(0 < arch.fixed_masked_fraction <= 1,
                 "arch.fixed_masked_fraction must be in (0, 1].")
    if data.source == "hf":
        _require(bool(data.hf_name), "data.source=hf needs data.hf_name (e.g. allenai/c4).")
    else:
        _require(len(data.paths) > 0,
                 f"data.source={data.source} needs data.paths=[...] (files, folders or globs).")
    if data.tokenizer == "pretrained":
        _require(bool(data.pretrained_tokenizer),
                 "data.tokenizer=pretrained needs data.pretrained_tokenizer=<name or path>.")
    if impl.precision == "fp16":
        _require(impl.device in ("auto", "cuda"), "impl.precision=fp16 needs CUDA.")
