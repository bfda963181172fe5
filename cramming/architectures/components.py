"""Building blocks of the one transformer: norms, positions, attention, FFN, block, head.

Every family (crammed, BERT, GPT, Llama, LTG-BERT, GPT-BERT) is a configuration of the same
:class:`Block`; the fields of :class:`~cramming.config.schema.ArchConfig` switch its variants:
norm placement (``norm_scheme``) and affinity (``norm_affine``), attention variants (grouped
K/V heads, RoPE, relative-position terms, output gate, inner norm), FFN variants (MLP / GLU,
inner norm) and bias switches (``linear_bias``, ``ffn_bias``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError, CrammingError

try:  # optional CUDA kernels; SDPA is the fallback everywhere
    from flash_attn import flash_attn_func, flash_attn_varlen_func
except ImportError:  # pragma: no cover - depends on the environment
    flash_attn_func = flash_attn_varlen_func = None


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "gelu_tanh": _gelu_tanh,  # GPT-BERT's GeGLU (ltgoslo/gpt-bert, pretraining/model.py)
    "relu": F.relu,
    "silu": F.silu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise nonlinearity called ``name`` (see :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"Unknown activation '{name}'. Allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def make_norm(arch: ArchConfig, width: int | None = None, affine: bool | None = None) -> nn.Module:
    """``arch.norm`` over ``width`` features (default hidden), affine as ``arch.norm_affine``.

    Torch modules, so optimizers can exempt their weights from weight decay.
    """
    width = arch.hidden_size if width is None else width
    affine = arch.norm_affine if affine is None else affine
    if arch.norm == "layernorm":
        return nn.LayerNorm(width, eps=arch.norm_eps, elementwise_affine=affine)
    if arch.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=arch.norm_eps, elementwise_affine=affine)
    raise ConfigError(f"Unknown arch.norm '{arch.norm}'. Allowed: layernorm, rmsnorm")


# ----------------------------------------------------------------------------- positions


def sinusoid_table(max_len: int, dim: int) -> torch.Tensor:
    """The fixed [max_len, dim] sinusoid of "Attention is all you need" (sin even, cos odd)."""
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(max_len, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal positions, optionally times one learned scalar (Cramming's variant)."""

    def __init__(self, max_len: int, dim: int, scaled: bool) -> None:
        super().__init__()
        # Not persistent: it is a pure function of the shape, so checkpoints stay small.
        self.register_buffer("table", sinusoid_table(max_len, dim), persistent=False)
        # Cramming starts the scale at 1/sqrt(dim) so positions do not swamp token embeddings
        # (JonasGeiping/cramming, cramming/architectures/embeddings.py).
        # Shape [1], not a 0-d scalar: FSDP2 cannot shard 0-d parameters.
        self.scale = nn.Parameter(torch.full((1,), dim**-0.5)) if scaled else None

    def forward(self, seq_len: int) -> torch.Tensor:
        positions = self.table[:seq_len]
        return positions * self.scale if self.scale is not None else positions


class LearnedPositions(nn.Module):
    """A learned [max_len, dim] position table (original BERT, GPT-2)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, dim)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.embedding.weight[:seq_len]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension (the RoPE pairing of GPT-NeoX/Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: ``q_m . k_n`` depends on positions only through ``m - n``."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)  # [max_len, head_dim]
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """Rotate ``x`` [B, heads, L, head_dim] as if it started at position ``offset``."""
        seq_len = x.shape[-2]
        cos = self.cos[offset : offset + seq_len].to(x.dtype)
        sin = self.sin[offset : offset + seq_len].to(x.dtype)
        return x * cos + rotate_half(x) * sin


def relative_buckets(seq_len: int, buckets: int, max_len: int, device=None) -> torch.Tensor:
    """[L, L] index into the ``2 * buckets - 1`` relative embeddings for query i, key j.

    GPT-BERT's log buckets of the offset ``d = i - j`` (ltgoslo/gpt-bert,
    pretraining/model.py ``make_log_bucket_position``): ``|d| <= buckets // 2`` keeps its own
    bucket, longer offsets share ``ceil``-log-spaced buckets reaching ``buckets - 1`` at
    ``max_len - 1``; the index is the signed bucket plus ``buckets - 1``.
    """
    position = torch.arange(seq_len, device=device)
    offset = position[:, None] - position[None, :]
    mid = buckets // 2
    distance = offset.abs().clamp(min=mid - 1, max=max_len - 1).float()
    log_part = torch.log(distance / mid) / math.log((max_len - 1) / mid) * (mid - 1)
    far = (torch.ceil(log_part).long() + mid) * torch.sign(offset)
    return torch.where(offset.abs() <= mid, offset, far) + buckets - 1


class RelativePositions(nn.Module):
    """Learned embeddings of bucketed relative offsets, normalized, shared by all layers."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.buckets, self.max_len = arch.position_buckets, arch.max_seq_length
        self.embedding = nn.Embedding(2 * arch.position_buckets - 1, arch.hidden_size)
        # GPT-BERT keeps this norm affine even where the block norms are not.
        self.norm = make_norm(arch, affine=True)
        index = relative_buckets(arch.max_seq_length, self.buckets, self.max_len)
        self.register_buffer("index", index, persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised bucket embeddings [2B-1, H] and the [L, L] bucket index."""
        return self.norm(self.embedding.weight), self.index[:seq_len, :seq_len]


class Embeddings(nn.Module):
    """Token (+ absolute position) (+ token type) embeddings, then optional norm and dropout."""

    def __init__(self, arch: ArchConfig, vocab_size: int, pad_token_id: int | None) -> None:
        super().__init__()
        self.max_seq_length = arch.max_seq_length
        self.word = nn.Embedding(vocab_size, arch.hidden_size, padding_idx=pad_token_id)
        kind = arch.position_embedding
        self.position: nn.Module | None = None
        if kind == "learned":
            self.position = LearnedPositions(arch.max_seq_length, arch.hidden_size)
        elif kind in ("sinusoidal", "scaled-sinusoidal"):
            self.position = SinusoidalPositions(arch.max_seq_length, arch.hidden_size,
                                                scaled=kind == "scaled-sinusoidal")
        elif kind not in ("rope", "relative"):  # those act inside attention
            raise ConfigError(f"Unknown arch.position_embedding '{kind}'. Allowed: learned, "
                              "sinusoidal, scaled-sinusoidal, rope, relative")
        self.token_type = None
        if arch.type_vocab_size > 0:
            self.token_type = nn.Embedding(arch.type_vocab_size, arch.hidden_size)
        self.norm = make_norm(arch) if arch.embedding_norm else None
        self.dropout = nn.Dropout(arch.dropout)

    def forward(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        if seq_len > self.max_seq_length:
            raise CrammingError(
                f"Sequence length {seq_len} exceeds arch.max_seq_length={self.max_seq_length}; "
                "raise arch.max_seq_length or shorten the inputs."
            )
        x = self.word(input_ids)
        if self.position is not None:
            x = x + self.position(seq_len)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


# ----------------------------------------------------------------------------- attention


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
    dropout_p: float, is_causal: bool = False, scale: float | None = None,
) -> torch.Tensor:
    """softmax(QK^T * scale + mask) V written out; a boolean ``mask`` is True = attend."""
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        seq_len = q.shape[-2]
        future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
            else scores + mask
    probs = F.dropout(scores.softmax(dim=-1), p=dropout_p)
    return probs @ v


def require_flash_attn(impl: str) -> None:
    """Fail at build time when ``impl`` asks for flash-attn and the package is missing."""
    if impl == "flash-attn" and flash_attn_func is None:
        raise ConfigError(
            "arch.attention_impl=flash-attn needs the flash-attn package "
            "(pip install flash-attn); or use attention_impl=auto / sdpa."
        )


def use_flash_attn(impl: str, x: torch.Tensor, unmasked: bool) -> bool:
    """Whether attention on ``x`` goes through flash-attn.

    ``flash-attn`` (explicit): always, and only on CUDA in fp16/bf16 (else a clear error);
    ``auto``: when the package is installed, on CUDA in fp16/bf16, without a mask and not
    under torch.compile (older flash-attn releases are opaque to Dynamo: a graph break).
    Otherwise SDPA, which picks its own FlashAttention kernel on CUDA for half precision.
    """
    half = x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)
    if impl == "flash-attn":
        if not half:
            raise CrammingError(
                "arch.attention_impl=flash-attn runs only on CUDA in fp16/bf16 "
                f"(got device={x.device.type}, dtype={x.dtype}); use attention_impl=auto."
            )
        return True
    return (impl == "auto" and flash_attn_func is not None and unmasked and half
            and not torch.compiler.is_compiling())


def _flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     keep: torch.Tensor | None, dropout_p: float, causal: bool) -> torch.Tensor:
    """flash-attn on [B, L, nh, hd] tensors; with a key padding mask ``keep`` [B, L] via the
    varlen kernel (data-dependent shapes: eager only)."""
    if keep is None:
        return flash_attn_func(q, k, v, dropout_p=dropout_p, causal=causal)
    batch, seq_len, heads, head_dim = q.shape
    # Pack the kept tokens of all rows back to back (order within a row is preserved).
    index = keep.flatten().nonzero().squeeze(1)
    lengths = keep.sum(dim=1, dtype=torch.int32)
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    max_len = int(lengths.max())
    q, k, v = (t.reshape(batch * seq_len, t.shape[2], head_dim)[index] for t in (q, k, v))
    packed = flash_attn_varlen_func(q, k, v, cu_seqlens, cu_seqlens, max_len, max_len,
                                    dropout_p=dropout_p, causal=causal)
    out = packed.new_zeros(batch * seq_len, heads, head_dim)
    out[index] = packed
    return out.view(batch, seq_len, heads, head_dim)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with one fused input projection.

    The projection's output rows are ``[q (heads), k (kv heads), v (kv heads), gate (heads)]``
    each head-major; the gate exists with ``arch.attention_gate`` (GPT-BERT: the context is
    multiplied by GELU(gate)). Optional: RoPE on q/k, relative-position terms (added to the
    scores as a float mask, scale ``1/sqrt(3 head_dim)``), a norm before the output projection
    (``arch.inner_norms``).
    """

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        if arch.hidden_size % arch.num_heads:
            raise ConfigError(f"arch.hidden_size={arch.hidden_size} must be divisible by "
                              f"arch.num_heads={arch.num_heads}")
        self.num_heads = arch.num_heads
        self.num_kv_heads = arch.num_kv_heads or arch.num_heads
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"arch.num_kv_heads={self.num_kv_heads} must divide "
                              f"arch.num_heads={arch.num_heads}")
        self.head_dim = arch.hidden_size // arch.num_heads
        self.q_width = self.num_heads * self.head_dim
        self.kv_width = self.num_kv_heads * self.head_dim
        self.gated = arch.attention_gate
        widths = [self.q_width, self.kv_width, self.kv_width] + [self.q_width] * self.gated
        self.widths = widths
        self.qkv = nn.Linear(arch.hidden_size, sum(widths), bias=arch.linear_bias)
        self.norm = make_norm(arch, self.q_width) if arch.inner_norms else None
        self.out = nn.Linear(self.q_width, arch.hidden_size, bias=arch.linear_bias)
        self.attention_dropout = arch.attention_dropout
        self.impl = arch.attention_impl
        require_flash_attn(self.impl)
        if self.impl == "flash-attn" and arch.position_embedding == "relative":
            raise ConfigError("arch.attention_impl=flash-attn cannot add the relative-position "
                              "terms (position_embedding=relative); use attention_impl=sdpa.")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool = False,
                rope: RotaryEmbedding | None = None,
                relative: tuple[torch.Tensor, torch.Tensor] | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, L, H]; ``mask`` boolean [B|1, 1, L|1, L] (True = attend) or None;
        ``keep`` [B, L] the key padding behind ``mask`` when that is all it holds (flash)."""
        batch, seq_len, _ = x.shape
        parts = self.qkv(x).split(self.widths, dim=-1)
        q, k, v = (t.view(batch, seq_len, -1, self.head_dim) for t in parts[:3])  # [B,L,n,hd]
        dropout_p = self.attention_dropout if self.training else 0.0
        if rope is None and relative is None and self._use_flash(q, mask, keep):
            y = _flash_attention(q, k, v, keep if mask is not None else None, dropout_p,
                                 is_causal)
        else:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, n, L, hd]
            if rope is not None:
                q, k = rope(q), rope(k)
            if self.num_kv_heads != self.num_heads:
                repeat = self.num_heads // self.num_kv_heads
                k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
            scale = None
            if relative is not None:
                scale = (3 * self.head_dim) ** -0.5
                mask = self._relative_scores(q, k, relative, mask, is_causal, scale)
                is_causal = False
            if self.impl == "eager":
                y = eager_attention(q, k, v, mask, dropout_p, is_causal, scale)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                   is_causal=is_causal and mask is None,
                                                   scale=scale)
            y = y.transpose(1, 2)
        y = y.reshape(batch, seq_len, self.q_width)
        if self.gated:
            y = y * F.gelu(parts[3])
        if self.norm is not None:
            y = self.norm(y)
        return self.out(y)

    def _use_flash(self, q: torch.Tensor, mask: torch.Tensor | None,
                   keep: torch.Tensor | None) -> bool:
        if mask is not None and (keep is None or torch.compiler.is_compiling()):
            # Only a pure key-padding mask packs into the varlen kernel, and that packing has
            # data-dependent shapes: otherwise (and under torch.compile) SDPA takes the mask.
            return False
        return use_flash_attn(self.impl, q, mask is None)

    def _relative_scores(self, q: torch.Tensor, k: torch.Tensor,
                         relative: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                         is_causal: bool, scale: float) -> torch.Tensor:
        """Float mask: content-to-position + position-to-content scores (DeBERTa / GPT-BERT).

        The bucket embeddings go through this layer's q/k projection (biases included, as in
        GPT-BERT); query i scores key j with ``q_i . k_pos[b(i,j)] + k_j . q_pos[b(i,j)]``.
        """
        table, index = relative
        table = F.dropout(table, self.attention_dropout, self.training)
        weight, bias = self.qkv.weight[: self.q_width + self.kv_width], None
        if self.qkv.bias is not None:
            bias = self.qkv.bias[: self.q_width + self.kv_width]
        pos_q, pos_k = F.linear(table, weight, bias).split([self.q_width, self.kv_width], -1)
        pos_q = pos_q.view(-1, self.num_heads, self.head_dim).transpose(0, 1)  # [nh, P, hd]
        pos_k = pos_k.view(-1, self.num_kv_heads, self.head_dim).transpose(0, 1)
        if self.num_kv_heads != self.num_heads:
            pos_k = pos_k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=0)
        pos_q, pos_k = pos_q.to(q.dtype), pos_k.to(q.dtype)
        seq_len = q.shape[-2]
        expand = index.expand(*q.shape[:2], seq_len, seq_len)
        c2p = torch.gather(q @ pos_k.transpose(-1, -2), -1, expand)  # [B, nh, Lq, Lk]
        p2c = torch.gather(k @ pos_q.transpose(-1, -2), -1, expand.transpose(-1, -2))
        scores = (c2p + p2c.transpose(-1, -2)) * scale
        if is_causal:
            future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        return scores


# ----------------------------------------------------------------------------- feed-forward


def _activation_backward(name: str, grad: torch.Tensor, inp: torch.Tensor,
                         out: torch.Tensor) -> None:
    """Write d act(inp) / d inp * grad into ``out`` (a strided view) without a temporary."""
    if name in ("gelu", "gelu_tanh"):
        approximate = "tanh" if name == "gelu_tanh" else "none"
        torch.ops.aten.gelu_backward.grad_input(grad, inp, approximate=approximate,
                                                grad_input=out)
    elif name == "silu":
        torch.ops.aten.silu_backward.grad_input(grad, inp, grad_input=out)
    else:  # relu
        torch.ops.aten.threshold_backward.grad_input(grad, inp, 0, grad_input=out)


class _GatedActivation(torch.autograd.Function):
    """``act(a) * b`` for ``a, b = x.chunk(2, -1)``, with a backward that writes both halves
    of the input gradient in place instead of concatenating them (saves one full copy of the
    widest activation per layer; same saved tensors as the unfused version)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, name: str) -> torch.Tensor:
        a, b = x.chunk(2, dim=-1)
        activated = ACTIVATIONS[name](a)
        ctx.save_for_backward(x, activated)
        ctx.name = name
        return activated * b

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, activated = ctx.saved_tensors
        a, b = x.chunk(2, dim=-1)
        grad_x = torch.empty_like(x)
        grad_a, grad_b = grad_x.chunk(2, dim=-1)
        torch.mul(grad, activated, out=grad_b)
        _activation_backward(ctx.name, grad * b, a, grad_a)
        return grad_x, None


def gated_activation(x: torch.Tensor, name: str) -> torch.Tensor:
    """GLU nonlinearity ``act(a) * b`` of the two halves of ``x``'s last dimension.

    Eager training uses the in-place backward of :class:`_GatedActivation`; under
    torch.compile the plain expression is traced (Dynamo cannot trace ``out=`` into strided
    views, and Inductor fuses the elementwise ops and chooses what to save by itself).
    """
    if x.requires_grad and torch.is_grad_enabled() and not torch.compiler.is_compiling():
        return _GatedActivation.apply(x, name)
    a, b = x.chunk(2, dim=-1)
    return ACTIVATIONS[name](a) * b


class FeedForward(nn.Module):
    """``mlp``: Linear -> act -> Linear; ``glu``: Linear(h, 2i) -> act(a) * b -> Linear(i, h);
    with ``arch.inner_norms`` a norm before the output Linear (GPT-BERT)."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        if arch.ffn not in ("glu", "mlp"):
            raise ConfigError(f"Unknown arch.ffn '{arch.ffn}'. Allowed: glu, mlp")
        self.glu = arch.ffn == "glu"
        self.activation = arch.activation
        self.act = activation_fn(arch.activation)
        bias = arch.linear_bias if arch.ffn_bias is None else arch.ffn_bias
        width = arch.intermediate_size * (2 if self.glu else 1)
        self.inp = nn.Linear(arch.hidden_size, width, bias=bias)
        self.norm = make_norm(arch, arch.intermediate_size) if arch.inner_norms else None
        self.out = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = gated_activation(x, self.activation) if self.glu else self.act(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.out(x)


# ----------------------------------------------------------------------------- block, head


class Block(nn.Module):
    """Attention and feed-forward sublayers with residuals, normalized before (pre) or
    after (post) each; the two halves are also callable apart (layer weighting, DWA)."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        if arch.norm_scheme not in ("pre", "post"):
            raise ConfigError(f"Unknown arch.norm_scheme '{arch.norm_scheme}'. Allowed: pre, post")
        self.pre_norm = arch.norm_scheme == "pre"
        self.norm1 = make_norm(arch)
        self.attn = Attention(arch)
        self.norm2 = make_norm(arch)
        self.ffn = FeedForward(arch)
        self.dropout = nn.Dropout(arch.dropout)

    def attention_residual(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                           is_causal: bool = False, rope: RotaryEmbedding | None = None,
                           relative: tuple[torch.Tensor, torch.Tensor] | None = None,
                           keep: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` plus the attention sublayer."""
        if self.pre_norm:
            return x + self.dropout(self.attn(self.norm1(x), mask, is_causal, rope, relative,
                                              keep))
        return self.norm1(x + self.dropout(self.attn(x, mask, is_causal, rope, relative, keep)))

    def ffn_residual(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus the feed-forward sublayer."""
        if self.pre_norm:
            return x + self.dropout(self.ffn(self.norm2(x)))
        return self.norm2(x + self.dropout(self.ffn(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                is_causal: bool = False, rope: RotaryEmbedding | None = None,
                relative: tuple[torch.Tensor, torch.Tensor] | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.ffn_residual(self.attention_residual(x, mask, is_causal, rope, relative,
                                                         keep))


class LayerWeighting(nn.Module):
    """DenseFormer's depth-weighted average (DWA), as GPT-BERT uses it: after sublayer ``j``
    the stream becomes ``sum_m alpha_j[m] * state_m`` over the embedding output and every
    sublayer output so far (ltgoslo/gpt-bert, pretraining/model_extra.py ``DWAModules``)."""

    def __init__(self, num_sublayers: int) -> None:
        super().__init__()
        self.alphas = nn.ParameterList(nn.Parameter(torch.zeros(j + 2))
                                       for j in range(num_sublayers))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Start as the identity: all weight on the newest state."""
        for alpha in self.alphas:
            alpha.zero_()
            alpha[-1] = 1.0

    def forward(self, states: list[torch.Tensor], index: int) -> torch.Tensor:
        alpha = self.alphas[index]
        return torch.tensordot(alpha.to(states[0].dtype), torch.stack(states), dims=1)


class PredictionHead(nn.Module):
    """The transform before the decoder.

    ``bert``: Linear -> act -> norm (BERT's MLM head); ``linear``: the Linear alone (old
    Cramming ScriptableMaskedLM, NTNG bert-c5); ``ltg``: norm -> Linear -> GELU -> norm
    (GPT-BERT's MaskClassifier, ltgoslo/gpt-bert pretraining/model.py).
    """

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        kind = arch.prediction_head_type
        if kind not in ("bert", "linear", "ltg"):
            raise ConfigError(f"Unknown arch.prediction_head_type '{kind}'. "
                              "Allowed: bert, linear, ltg")
        self.pre_norm = make_norm(arch) if kind == "ltg" else None
        self.dense = nn.Linear(arch.hidden_size, arch.hidden_size, bias=arch.linear_bias)
        self.act = None
        if kind == "bert":
            self.act = activation_fn(arch.activation)
        elif kind == "ltg":
            self.act = F.gelu
        self.norm = make_norm(arch) if kind != "linear" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        x = self.dense(x)
        if self.act is not None:
            x = self.act(x)
        return x if self.norm is None else self.norm(x)
