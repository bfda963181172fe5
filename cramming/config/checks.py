"""Cross-field checks: combinations that are impossible, caught before any work starts."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from cramming.architectures.families import check_arch_family
from cramming.budget import check_budget
from cramming.config.schema import OptimConfig, PretrainConfig, TrainConfig
from cramming.errors import ConfigError

MIN_FREE_BYTES = 100 * 2**20  # base_dir needs room for checkpoints and the data cache
SEED_LIMIT = 2**32  # numpy.random.seed and torch.manual_seed take 0 <= seed < 2**32
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # data/tokenizer.py


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def check_pretrain_config(cfg: PretrainConfig) -> None:
    """Raise ConfigError naming the offending keys for any inconsistent setting."""
    arch, data, train, impl = cfg.arch, cfg.data, cfg.train, cfg.impl
    _require(cfg.budget > 0, f"budget={cfg.budget} must be > 0 ({cfg.budget_kind}).")
    _require(str(cfg.resume).lower() in ("true", "false", "auto"),
             f"resume={cfg.resume!r}: allowed values are true, false, auto.")
    _require(0 <= cfg.seed < SEED_LIMIT,
             f"seed={cfg.seed} is out of range: use 0 <= seed < 2**32 ({SEED_LIMIT}), the "
             f"range numpy and torch accept.")
    _require(0 <= data.shuffle_seed < SEED_LIMIT,
             f"data.shuffle_seed={data.shuffle_seed} is out of range: use 0 <= seed < 2**32.")
    if data.tokenizer != "pretrained" and data.source != "binary":
        _require(data.vocab_size > len(SPECIAL_TOKENS),
                 f"data.vocab_size={data.vocab_size} leaves no room beside the "
                 f"{len(SPECIAL_TOKENS)} special tokens; typical values: 8192 to 32768.")
    _require(impl.microbatch_size > 0, "impl.microbatch_size must be > 0.")
    _require(impl.data_workers >= 0 and impl.prefetch_microbatches >= 0,
             f"impl.data_workers={impl.data_workers} and impl.prefetch_microbatches="
             f"{impl.prefetch_microbatches} must be >= 0 (0 workers: build data on the "
             f"training thread).")
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
    check_schedule_options(train)
    check_optim_options(train.optim)
    _require(train.log_every_steps >= 1, "train.log_every_steps must be >= 1.")
    _require(train.keep_checkpoints >= 1,
             f"train.keep_checkpoints={train.keep_checkpoints} must be >= 1 (the checkpoint "
             f"just written is always kept; 0 would delete every one).")
    check_arch_family(arch)
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
    if impl.distributed == "fsdp":
        _require(not train.ema_decay, "train.ema_decay is not supported with "
                 "impl.distributed=fsdp yet; use impl.distributed=ddp.")
    if impl.distributed == "deepspeed":
        check_deepspeed_options(cfg)
    check_lm_options(cfg)
    check_method_options(cfg)
    check_validation_options(cfg)


def check_validation_options(cfg: PretrainConfig) -> None:
    """Periodic validation: one cadence, positive, in units the budget has."""
    train = cfg.train
    hours, fraction = train.validate_every_hours, train.validate_every_fraction
    _require(hours is None or fraction is None,
             f"train.validate_every_hours={hours} and train.validate_every_fraction={fraction}: "
             f"set one of them.")
    _require(fraction is None or 0 < fraction <= 1,
             f"train.validate_every_fraction={fraction} must be in (0, 1].")
    if hours is not None:
        _require(hours > 0, f"train.validate_every_hours={hours} must be > 0.")
        _require(cfg.budget_kind in ("hours", "rst"),
                 f"train.validate_every_hours needs a budget in hours (budget_kind=hours or rst), "
                 f"not {cfg.budget_kind}; use train.validate_every_fraction.")
    _require(train.val_rows >= 1, f"train.val_rows={train.val_rows} must be >= 1.")
    _require(train.val_batch_size is None or train.val_batch_size >= 1,
             f"train.val_batch_size={train.val_batch_size} must be >= 1 (or null).")


def check_schedule_options(train: TrainConfig) -> None:
    """LR and batch-size schedule fields (see ``cramming.schedules``)."""
    for key in ("lr_start", "warmup", "cooldown", "min_lr_ratio", "lr_end", "batch_size_ramp",
                "batch_size_start"):
        value = getattr(train, key)
        _require(0 <= value <= 1, f"train.{key}={value} must be in [0, 1].")
    _require(train.warmup + train.cooldown <= 1,
             f"train.warmup={train.warmup} + train.cooldown={train.cooldown} exceed the "
             f"budget; their sum must be <= 1.")


# Keys of OptimConfig that only some optimizers read; any other optimizer refuses a change.
OPTIM_ONLY = {"eps": ("adamw", "adam", "adam_classic", "sophiag", "lamb"),
              "fused": ("adamw", "adam", "adam_classic"),
              "rho": ("sophiag",), "hessian_interval": ("sophiag",),
              "hessian_batch_size": ("sophiag",), "hessian_scale": ("sophiag",),
              "hessian_mean_rows": ("sophiag",)}


def check_optim_options(optim: OptimConfig) -> None:
    """Optimizer values in range; keys another optimizer reads stay at their defaults."""
    _require(optim.lr > 0, f"train.optim.lr={optim.lr} must be > 0.")
    _require(len(optim.betas) == 2, "train.optim.betas needs two values, e.g. [0.9,0.98].")
    _require(optim.weight_decay >= 0,
             f"train.optim.weight_decay={optim.weight_decay} must be >= 0.")
    defaults = OptimConfig()
    for key, users in OPTIM_ONLY.items():
        if optim.name not in users:
            _require(getattr(optim, key) == getattr(defaults, key),
                     f"train.optim.{key}={getattr(optim, key)} does not apply to "
                     f"train/optim={optim.name} (only to {', '.join(users)}); remove it.")
    if optim.hessian_scale is not None:
        _require(optim.hessian_scale > 0,
                 f"train.optim.hessian_scale={optim.hessian_scale} must be > 0 (or null).")
    if optim.hessian_mean_rows is not None:
        _require(optim.hessian_mean_rows >= 1,
                 f"train.optim.hessian_mean_rows={optim.hessian_mean_rows} must be >= 1 "
                 f"(or null).")


def check_writable_dir(folder: str | Path, key: str = "base_dir",
                       min_free: int = MIN_FREE_BYTES) -> None:
    """Refuse (one line) a folder that cannot be created or written, or whose disk is full.

    Checks the nearest existing folder on its path by creating an unnamed temporary file
    there (what counts, also for root, to whom permission bits do not apply).
    """
    path = Path(folder).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{key}={folder} cannot be created: {existing} is a file, not a "
                          f"folder. Set {key} to a writable folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"{key}={folder} is not writable ({existing}: "
                          f"{error.strerror or error}). Set {key} to a writable folder.") from None
    free = shutil.disk_usage(existing).free
    if free < min_free:
        raise ConfigError(f"{key}={folder} is on a full disk: {free / 2**20:.0f} MiB free in "
                          f"{existing}, at least {min_free // 2**20} MiB needed. Free space "
                          f"or set {key} to a folder on another disk.")


def uses_training_method(cfg: PretrainConfig) -> bool:
    """Whether an efficient-training method (or Sophia-G's Hessian hook) is switched on."""
    method = cfg.method
    return (method.stacking.enabled or method.layer_drop.enabled
            or method.selection != "none" or cfg.train.optim.name == "sophiag")


def skips_layers(cfg: PretrainConfig) -> bool:
    """Whether a method runs only some of the layers in a pass (stacking, layer dropping)."""
    return cfg.method.stacking.enabled or cfg.method.layer_drop.enabled


def check_deepspeed_options(cfg: PretrainConfig) -> None:
    """DeepSpeed installed, its config file sound, and nothing asked that it cannot do."""
    from cramming.config.deepspeed_config import (
        read_deepspeed_config,
        require_deepspeed,
        zero_stage,
    )

    require_deepspeed()
    ds_config = read_deepspeed_config(cfg.impl.deepspeed_config)
    _require(cfg.impl.precision != "fp16",
             "impl.precision=fp16 is not supported with impl.distributed=deepspeed (the "
             "engine keeps fp32 master weights under autocast); use impl.precision=bf16.")
    _require(not uses_training_method(cfg),
             "The efficient-training methods (method.*, train/optim=sophiag) change the model "
             "or read its gradients between steps, which DeepSpeed owns: use "
             "impl.distributed=ddp (or one process) for them.")
    if zero_stage(ds_config) == 3:
        _require(not cfg.train.ema_decay,
                 "train.ema_decay needs whole parameters; ZeRO stage 3 partitions them. Use "
                 "impl.deepspeed_config=zero2 (or zero1) with EMA.")


# Model types whose forward takes ``causal=`` (and ``document_ids=`` / ``z_loss=``).
CAUSAL_CAPABLE = ("gpt", "llama", "ltg-bert")


def check_lm_options(cfg: PretrainConfig) -> None:
    """Checks of the causal-LM / hybrid options (objectives, schedules, new arch keys)."""
    arch, train, impl = cfg.arch, cfg.train, cfg.impl
    capable = arch.model_type in CAUSAL_CAPABLE
    if train.objective in ("clm", "hybrid"):
        _require(capable, f"train.objective={train.objective} needs a model that can attend "
                          f"causally: arch.model_type in {', '.join(CAUSAL_CAPABLE)} (e.g. "
                          f"arch=gpt-small, arch=llama-small, arch=gpt-bert-small); got "
                          f"arch.model_type={arch.model_type}.")
    if train.objective == "mlm":
        _require(not arch.causal, "train.objective=mlm with arch.causal=true would predict "
                                  "masked tokens without right context; use train.objective="
                                  "clm or hybrid, or arch.causal=false.")
    if train.objective == "hybrid":
        num, den = train.hybrid_numerator, train.hybrid_denominator
        _require(den >= 1 and 0 <= num <= den,
                 f"train.hybrid_numerator={num} / train.hybrid_denominator={den} must be a "
                 f"fraction in [0, 1] (the MNTP share of the training signal).")
        group = impl.microbatch_size * den
        _require(train.batch_size % group == 0,
                 f"train.objective=hybrid mixes MNTP and CLM microbatches {num}:{den - num} "
                 f"within every step, so train.batch_size={train.batch_size} must be a "
                 f"multiple of impl.microbatch_size x train.hybrid_denominator = {group}.")
    if train.z_loss or train.document_mask:
        _require(capable, f"train.z_loss / train.document_mask need arch.model_type in "
                          f"{', '.join(CAUSAL_CAPABLE)}; got {arch.model_type}.")
    _require(train.z_loss >= 0, f"train.z_loss={train.z_loss} must be >= 0.")
    _require(train.mask_span_length >= 1,
             f"train.mask_span_length={train.mask_span_length} must be >= 1.")
    if train.ema_decay is not None:
        _require(0 < train.ema_decay < 1, f"train.ema_decay={train.ema_decay} must be in (0, 1).")
    if train.seq_length_schedule is not None:
        check_seq_length_schedule(train.seq_length_schedule, cfg.data.seq_length)
    if arch.num_kv_heads is not None:
        _require(arch.num_kv_heads >= 1 and arch.num_heads % arch.num_kv_heads == 0,
                 f"arch.num_kv_heads={arch.num_kv_heads} must divide "
                 f"arch.num_heads={arch.num_heads}.")
    if arch.position_embedding in ("rope", "relative"):
        _require(capable, f"arch.position_embedding={arch.position_embedding} needs "
                          f"arch.model_type in {', '.join(CAUSAL_CAPABLE)}.")
    if arch.position_embedding == "rope":
        _require((arch.hidden_size // arch.num_heads) % 2 == 0,
                 "arch.position_embedding=rope needs an even head size (hidden/heads).")


def check_seq_length_schedule(schedule: list, seq_length: int) -> None:
    """``[[progress, length], ...]``: progress from 0 upwards, lengths dividing seq_length."""
    message = (f"train.seq_length_schedule={schedule} must be a list of [progress, length] "
               f"pairs with progress rising from 0 and each length (>= 8) dividing "
               f"data.seq_length={seq_length}, e.g. [[0,{seq_length // 4}],[0.3,"
               f"{seq_length // 2}],[0.7,{seq_length}]].")
    try:
        pairs = [(float(p), int(length)) for p, length in schedule]
    except (TypeError, ValueError):
        raise ConfigError(message) from None
    _require(len(pairs) > 0 and pairs[0][0] == 0, message)
    _require(all(a[0] < b[0] for a, b in zip(pairs, pairs[1:])), message)
    _require(all(8 <= length <= seq_length and seq_length % length == 0
                 and float(length) == float(l_raw)
                 for (_, length), (_, l_raw) in zip(pairs, schedule)), message)


def check_method_options(cfg: PretrainConfig) -> None:
    """Efficient-training methods, optimizers and RST: impossible combinations."""
    method, optim, arch = cfg.method, cfg.train.optim, cfg.arch
    depth_methods = [name for name, on in (("stacking", method.stacking.enabled),
                                           ("layer_drop", method.layer_drop.enabled)) if on]
    if depth_methods:
        _require(arch.model_type != "hf-bert",
                 f"method.{depth_methods[0]} changes which layers run and needs our own layer "
                 f"stack; arch.model_type=hf-bert has none (use e.g. arch=bert-c5).")
    if method.stacking.enabled:
        stack = method.stacking
        _require(1 <= stack.initial_layers < arch.num_layers,
                 f"method.stacking.initial_layers={stack.initial_layers} must be in "
                 f"[1, arch.num_layers={arch.num_layers}).")
        _require(len(stack.at) > 0 and all(0 < a < 1 for a in stack.at)
                 and list(stack.at) == sorted(set(stack.at)),
                 f"method.stacking.at={list(stack.at)} must be rising budget fractions in (0, 1).")
        depth = stack.initial_layers
        for _ in stack.at:
            depth = depth * 2 if stack.growth == "double" else depth + stack.add_layers
        _require(depth == arch.num_layers,
                 f"method.stacking grows {stack.initial_layers} layers to {depth} ({stack.growth} "
                 f"x{len(stack.at)}), but arch.num_layers={arch.num_layers}; adjust "
                 f"method.stacking.initial_layers / at / add_layers.")
        _require(0 <= stack.rewarmup < 1, "method.stacking.rewarmup must be in [0, 1).")
    if method.layer_drop.enabled:
        _require(0 < method.layer_drop.theta_min <= 1 and method.layer_drop.gamma >= 0,
                 "method.layer_drop needs 0 < theta_min <= 1 and gamma >= 0.")
    if method.selection != "none":
        _require(cfg.train.objective == "mlm",
                 f"method.selection={method.selection} scores examples by their MLM loss; "
                 f"train.objective={cfg.train.objective} is not supported.")
        _require(not method.train_on_held_out,
                 "method=il_model (irreducible-loss model) trains plainly on the held-out "
                 "split; it cannot also select batches (method.selection must be none).")
    if method.selection == "selective_backprop":
        sb = method.selective_backprop
        _require(sb.beta > 0 and sb.history >= 1,
                 "method.selective_backprop needs beta > 0 and history >= 1.")
    if method.selection == "rho_loss":
        _require(bool(method.rho_loss.il_losses),
                 "method.selection=rho_loss needs method.rho_loss.il_losses=<file> (train an "
                 "irreducible-loss model with method=il_model, then run "
                 "`python -m efficient_training.extract_il_losses`).")
        _require(0 < method.rho_loss.keep_fraction <= 1,
                 f"method.rho_loss.keep_fraction={method.rho_loss.keep_fraction} must be in "
                 f"(0, 1].")
        mega = method.rho_loss.mega_batch_size
        _require(mega is None or mega >= cfg.train.batch_size,
                 f"method.rho_loss.mega_batch_size={mega} must be at least train.batch_size="
                 f"{cfg.train.batch_size} (the rows kept from each mega-batch).")
    if optim.name == "sophiag":
        _require(optim.hessian_interval >= 1, "train.optim.hessian_interval must be >= 1.")
        _require(optim.rho > 0, "train.optim.rho must be > 0.")
        _require(optim.hessian_batch_size is None or optim.hessian_batch_size >= 1,
                 "train.optim.hessian_batch_size must be >= 1 (or null).")
        _require(cfg.impl.precision != "fp16",
                 "train/optim=sophiag estimates its Hessian without loss scaling; use "
                 "impl.precision=bf16 or fp32, not fp16.")
        _require(cfg.train.objective == "mlm",
                 "train/optim=sophiag samples labels from the MLM logits; it needs "
                 "train.objective=mlm.")
    check_budget(cfg)
