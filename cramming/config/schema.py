"""Typed schema of every config group.

Hydra composes YAML files from ``cramming/config``; :func:`cramming.config.validate`
merges the result into these dataclasses, so an unknown key or a wrong type fails at
start-up with the key's name. Option values that must come from a fixed set are listed
in ``CHOICES`` and checked there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Allowed values of string-valued options, checked at start-up ("key": allowed values).
CHOICES: dict[str, tuple[str, ...]] = {
    "budget_kind": ("hours", "steps", "tokens", "rst"),
    "arch.model_type": ("crammed", "hf-bert", "gpt", "llama", "ltg-bert"),
    "arch.norm": ("layernorm", "rmsnorm"),
    "arch.norm_scheme": ("pre", "post"),
    "arch.prediction_head_type": ("bert", "linear", "ltg"),
    "arch.init_scheme": ("normal", "scaled-residual", "ltg"),
    "arch.ffn": ("glu", "mlp"),
    "arch.activation": ("gelu", "gelu_tanh", "relu", "silu"),
    "arch.position_embedding": ("scaled-sinusoidal", "sinusoidal", "learned", "rope", "relative"),
    "arch.attention_impl": ("auto", "sdpa", "flash-attn", "eager"),
    "data.source": ("wikiextractor", "text", "jsonl", "hf", "binary", "gpt-bert"),
    "data.tokenizer": ("wordpiece", "bpe", "unigram", "pretrained"),
    "train.objective": ("mlm", "clm", "hybrid"),
    "train.scheduler": ("linear", "cosine", "constant", "inverse-sqrt"),
    "train.optim.name": ("adamw", "adam", "adam_classic", "lion", "sophiag", "lamb"),
    "impl.device": ("auto", "cpu", "cuda", "mps"),
    "impl.precision": ("auto", "fp32", "bf16", "fp16"),
    "impl.compile_mode": (None, "default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"),
    "impl.distributed": ("ddp", "fsdp", "deepspeed"),
    "wandb.mode": ("offline", "online", "disabled"),
    "method.selection": ("none", "selective_backprop", "rho_loss"),
    "method.stacking.growth": ("double", "add"),
    "method.stacking.optimizer_state": ("keep", "copy", "reset"),
}


@dataclass
class ArchConfig:
    """Model architecture. ``vocab_size`` is not here: it comes from the tokenizer."""

    name: str = "crammed-bert"
    model_type: str = "crammed"  # crammed: our encoder; hf-bert: transformers.BertForMaskedLM
    num_layers: int = 16
    hidden_size: int = 768
    num_heads: int = 12
    intermediate_size: int = 3072  # for glu: width of each of the two branches
    max_seq_length: int = 128  # positions the embedding supports
    norm: str = "layernorm"
    norm_eps: float = 1e-12
    norm_scheme: str = "pre"
    final_norm: bool = True
    embedding_norm: bool = True
    linear_bias: bool = False
    ffn: str = "glu"
    activation: str = "gelu"
    position_embedding: str = "scaled-sinusoidal"
    tie_weights: bool = True
    prediction_head: bool = True  # a transform of the hidden states before the decoder
    # Which transform: bert = Linear -> activation -> norm (BERT); linear = one Linear h -> h,
    # no activation, no norm (old Cramming ScriptableMaskedLM, NTNG's bert-c5); ltg = norm ->
    # Linear -> GELU -> norm (GPT-BERT).
    prediction_head_type: str = "bert"
    sparse_prediction: bool = True  # decode only masked positions
    # If set, decode exactly round(fraction * tokens) positions per batch (static shapes).
    fixed_masked_fraction: float | None = None
    dropout: float = 0.1
    attention_dropout: float = 0.1
    init_std: float = 0.02
    type_vocab_size: int = 0  # 0: no token-type embedding
    attention_impl: str = "auto"
    # Causal-LM families (gpt, llama, ltg-bert); the defaults leave the encoders unchanged.
    causal: bool = False  # default attention pattern: True = no token sees the future
    num_kv_heads: int | None = None  # grouped-query attention; None = num_heads
    rope_theta: float = 10000.0  # base of the rotary frequencies (position_embedding: rope)
    position_buckets: int = 32  # relative-position buckets (position_embedding: relative)
    # Variants of the one block (cramming/architectures/components.py).
    norm_affine: bool = True  # false: norms without weight/bias (GPT-BERT's block norms)
    inner_norms: bool = False  # a norm before the attention and FFN output projections
    attention_gate: bool = False  # attention context times GELU(a gate projection)
    dwa: bool = False  # depth-weighted average of all earlier sublayer outputs (DenseFormer)
    ffn_bias: bool | None = None  # FFN Linear biases; null: linear_bias
    decoder_bias: bool | None = None  # decoder bias; null: linear_bias
    init_scheme: str = "normal"  # normal | scaled-residual (GPT-2) | ltg (GPT-BERT)


@dataclass
class DataConfig:
    """Pretraining corpus, tokenizer and packing."""

    name: str = "demo"
    source: str = "wikiextractor"
    paths: list[str] = field(default_factory=list)  # files, folders or globs (local sources)
    hf_name: str | None = None  # hub dataset id for source=hf, e.g. "allenai/c4"
    hf_config: str | None = None
    hf_split: str = "train"
    # data_files for source=hf, passed verbatim (local files/globs, or patterns inside the hub repo)
    hf_data_files: list[str] = field(default_factory=list)
    streaming: bool = True
    text_field: str = "text"
    max_documents: int | None = None
    min_document_chars: int = 32  # shorter documents (title-only stubs) are skipped
    tokenizer: str = "wordpiece"
    pretrained_tokenizer: str | None = None  # name or path, for tokenizer=pretrained
    vocab_size: int = 32768
    lowercase: bool = True
    strip_accents: bool = True
    tokenizer_train_documents: int | None = None  # cap on documents used to train it
    seq_length: int = 128
    val_fraction: float = 0.01
    shuffle_seed: int = 0
    num_proc: int = 0  # 0: all cores
    tokenize_batch_size: int = 1000


@dataclass
class OptimConfig:
    """Optimizer (``train/optim`` presets; adam and adamw are AdamW, adam_classic torch Adam)."""

    name: str = "adamw"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-12  # unused by lion
    weight_decay: float = 0.01
    fused: bool | None = None  # adam / adamw / adam_classic; None: fused where supported
    # Sophia-G only: clipping threshold rho, Hessian estimate every k steps over this many
    # sequences (null: one microbatch), EMA factor of the estimate is betas[1]. The update
    # divides by rho * hessian_scale * h; null: by the predictions of each estimate.
    rho: float = 0.04
    hessian_interval: int = 10
    hessian_batch_size: int | None = None
    hessian_scale: float | None = None
    hessian_mean_rows: int | None = None  # g_hat: sum of mean losses of groups of this many rows


@dataclass
class TrainConfig:
    """Training recipe: optimizer, schedules (functions of budget progress), objective."""

    name: str = "bert-o4"
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch_size: int = 8192  # sequences per optimizer step
    batch_size_ramp: float = 0.6  # budget fraction over which the batch grows; 0: off
    batch_size_start: float = 0.0  # ramp start as a fraction of batch_size; 0: one microbatch
    # LR factor (schedules.lr_factor): lr_start -> 1 linearly until `warmup` (the peak), then
    # the `scheduler` shape (linear / cosine / constant / inverse-sqrt) towards min_lr_ratio
    # at 100%; the last `cooldown` of the budget goes linearly from there to lr_end.
    scheduler: str = "linear"
    lr_start: float = 0.25
    warmup: float = 0.75
    cooldown: float = 0.0
    min_lr_ratio: float = 0.0
    lr_end: float = 0.0
    gradient_clipping: float | None = 0.5
    objective: str = "mlm"
    mask_prob: float = 0.25
    mask_prob_end: float | None = None  # linear masking-rate schedule when set
    mask_token_prob: float = 0.8  # of masked positions: replaced by [MASK]
    random_token_prob: float = 0.1  # of masked positions: replaced by a random token
    exact_mask_count: bool = True  # exactly round(p * seq_length) per row (static decode shape)
    # true: special tokens may be selected and drawn as random replacements, as Cramming's
    # collator does (it ignores the special-tokens mask); false: they never are
    mask_special_tokens: bool = False
    log_every_steps: int = 10
    checkpoint_every_minutes: float = 30.0
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 2
    validate_at_end: bool = True
    # Held-out loss during training at fixed points of the budget (README "Validation"):
    # every this many budget hours (budget_kind hours or rst; NTNG's impl.validate_every_hours)
    validate_every_hours: float | None = None
    validate_every_fraction: float | None = None  # or: every this fraction of the budget
    val_rows: int = 6400  # the first rows of the held-out split scored (at every point)
    val_batch_size: int | None = None  # rows per validation forward; null: microbatch_size
    # Causal LM and the GPT-BERT hybrid (objective: clm / hybrid); see README "Objectives".
    hybrid_numerator: int = 1  # MNTP share of the training signal: numerator / denominator
    hybrid_denominator: int = 2
    mask_span_length: int = 1  # > 1: GPT-BERT's span masking, spans of 1..mask_span_length
    # [[progress, length], ...]: rows of data.seq_length are cut into shorter rows until
    # that budget fraction (tokens per batch stay constant); null: always data.seq_length.
    seq_length_schedule: list[Any] | None = None
    token_weighted_loss: bool = False  # step loss = sum of token losses / targets in the step
    z_loss: float = 0.0  # coefficient of the logsumexp(logits)^2 regulariser
    document_mask: bool = False  # tokens attend only within their document (gpt/llama/ltg)
    ema_decay: float | None = None  # keep an exponential moving average of the weights


@dataclass
class ImplConfig:
    """How to run: device, precision, compilation, batch splitting."""

    name: str = "default"
    microbatch_size: int = 128
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 on CUDA with support, else fp32
    compile: bool = False
    compile_mode: str | None = None  # torch.compile mode; null: its default
    # One graph for the whole training forward + loss: a graph break (host sync, data-
    # dependent shape) is an error instead of a silent slowdown. false: allow breaks.
    compile_fullgraph: bool = True
    # CUDA graphs (compile mode reduce-overhead): needs CUDA and impl.compile=true.
    cuda_graphs: bool = False
    threads: int | None = None
    # Background threads that read, mask (and pin) microbatches ahead of the step; 0 builds
    # them on the training thread. Results do not depend on either setting.
    data_workers: int = 1
    prefetch_microbatches: int = 4
    deterministic: bool = False
    progress_bar: bool = True
    # Parallel backend: ddp (replicated) | fsdp (FSDP2 fully_shard) under torchrun/SLURM;
    # deepspeed (ZeRO, also on one process) with the ZeRO settings of deepspeed_config.
    distributed: str = "ddp"
    deepspeed_config: str = "zero2"  # bundled name (zero1, zero2, zero3, *_offload) or a path


@dataclass
class WandbConfig:
    name: str = "none"
    enabled: bool = False
    project: str = "cramming"
    entity: str | None = None
    mode: str = "offline"
    tags: list[str] = field(default_factory=list)


@dataclass
class StackingConfig:
    """Progressive layer stacking: train a shallow model, grow it at budget fractions."""

    enabled: bool = False
    initial_layers: int = 4
    growth: str = "double"  # double: copy layers [0, k) onto [k, 2k); add: copy the top layer
    add_layers: int = 1  # layers added per growth for growth=add
    at: list[float] = field(default_factory=lambda: [0.125, 0.3])  # budget fractions (NTNG)
    # keep (NTNG): old layers keep their state, new ones start fresh; copy: new layers get
    # their source's state; reset: every state starts fresh
    optimizer_state: str = "keep"
    rewarmup: float = 0.0  # budget fraction of linear LR re-warmup after each growth


@dataclass
class LayerDropConfig:
    """Progressive layer dropping (Zhang & He 2020): keep-probability theta(progress)."""

    enabled: bool = False
    theta_min: float = 0.5  # theta(p) = theta_min + (1 - theta_min) * exp(-gamma * p)
    gamma: float = 100.0  # in units of 1 / budget
    rescale: bool = False  # true: scale a kept layer's residual by 1 / keep-prob (NTNG: no)


@dataclass
class SelectiveBackpropConfig:
    """Selective backprop (Jiang et al. 2019): P(select) = percentile(loss)^beta."""

    beta: float = 1.0
    history: int = 5000  # recent losses the percentile is taken over (NTNG)


@dataclass
class RhoLossConfig:
    """RHO-Loss (Mindermann et al. 2022): top-k of (training loss - irreducible loss)."""

    il_losses: str | None = None  # file written by efficient_training/extract_il_losses.py
    keep_fraction: float = 0.1  # train.batch_size / rows scored per selection (NTNG 1536/15360)
    mega_batch_size: int | None = None  # rows scored per selection; set: wins over keep_fraction


@dataclass
class MethodConfig:
    """Efficient-training methods; they compose (see cramming/config/checks.py)."""

    name: str = "none"
    stacking: StackingConfig = field(default_factory=StackingConfig)
    layer_drop: LayerDropConfig = field(default_factory=LayerDropConfig)
    selection: str = "none"  # none | selective_backprop | rho_loss
    selective_backprop: SelectiveBackpropConfig = field(default_factory=SelectiveBackpropConfig)
    rho_loss: RhoLossConfig = field(default_factory=RhoLossConfig)
    train_on_held_out: bool = False  # RHO's irreducible-loss model trains on the val split


@dataclass
class RSTConfig:
    """Reference System Time (budget_kind=rst): which table, which passes are charged."""

    device: str = "auto"  # table device, e.g. rtx3090; auto: this machine (cpu-<model>, ...)
    table: str | None = None  # explicit table file; null: search rst/tables/ and tables_dir
    tables_dir: str | None = None
    charge_scoring_passes: bool = True  # false: SB/RHO forward scoring is free (NTNG default)
    charge_hessian_passes: bool = True  # false: Sophia's estimator passes are free
    charge_optimizer_step: bool = True


@dataclass
class PretrainConfig:
    name: str = "default"
    budget: float = 24.0
    budget_kind: str = "hours"
    seed: int = 0
    base_dir: str = "outputs"
    dryrun: bool = False
    resume: Any = False  # false | true | auto
    resume_allow_data_change: bool = False  # resume even if the data stream changed
    arch: ArchConfig = field(default_factory=ArchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    impl: ImplConfig = field(default_factory=ImplConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    rst: RSTConfig = field(default_factory=RSTConfig)


@dataclass
class ValidateConfig:
    """validate_bert.py: which model, which data, how to mask."""

    name: str | None = None
    base_dir: str = "outputs"
    model_path: str | None = None
    mask_prob: float = 0.15
    seed: int = 0
    batch_size: int = 64
    max_batches: int | None = None  # at most max_batches x batch_size rows
    max_rows: int | None = None  # the first max_rows rows, whatever batch_size
    split: str = "val"
    impl: ImplConfig = field(default_factory=ImplConfig)
    data: DataConfig | None = None


@dataclass
class GenerateConfig:
    """generate.py: sample a continuation from a causal checkpoint."""

    name: str | None = None
    base_dir: str = "outputs"
    model_path: str | None = None
    prompt: str = ""
    max_new_tokens: int = 50
    temperature: float = 1.0  # 0: greedy
    top_k: int | None = None  # sample from the k most likely tokens only
    num_samples: int = 1
    seed: int = 0
    stop_at_document_end: bool = True  # stop at [SEP] (the end-of-document token)
    device: str = "cpu"
