"""Building blocks of the crammed encoder: norms, embeddings, attention, FFN, layer, head."""

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

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise nonlinearity called ``name`` (gelu, relu, silu)."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"Unknown activation '{name}'. Allowed: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def make_norm(arch: ArchConfig) -> nn.Module:
    """LayerNorm or RMSNorm (torch modules, so optimizers can exempt them from weight decay)."""
    if arch.norm == "layernorm":
        return nn.LayerNorm(arch.hidden_size, eps=arch.norm_eps)
    if arch.norm == "rmsnorm":
        return nn.RMSNorm(arch.hidden_size, eps=arch.norm_eps)
    raise ConfigError(f"Unknown arch.norm '{arch.norm}'. Allowed: layernorm, rmsnorm")


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
        # Cramming starts the scale at 1/sqrt(dim) so positions do not swamp token embeddings.
        # Shape [1], not a 0-d scalar: FSDP2 cannot shard 0-d parameters.
        self.scale = nn.Parameter(torch.full((1,), dim**-0.5)) if scaled else None

    def forward(self, seq_len: int) -> torch.Tensor:
        positions = self.table[:seq_len]
        return positions * self.scale if self.scale is not None else positions


class LearnedPositions(nn.Module):
    """A learned [max_len, dim] position table (original BERT)."""

    def __init__(self, max_len: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(max_len, dim)

    def forward(self, seq_len: int) -> torch.Tensor:
        return self.embedding.weight[:seq_len]


class Embeddings(nn.Module):
    """Token + position (+ token type) embeddings, then optional norm and dropout."""

    def __init__(self, arch: ArchConfig, vocab_size: int, pad_token_id: int) -> None:
        super().__init__()
        self.max_seq_length = arch.max_seq_length
        self.word = nn.Embedding(vocab_size, arch.hidden_size, padding_idx=pad_token_id)
        if arch.position_embedding == "learned":
            self.position: nn.Module = LearnedPositions(arch.max_seq_length, arch.hidden_size)
        elif arch.position_embedding in ("sinusoidal", "scaled-sinusoidal"):
            scaled = arch.position_embedding == "scaled-sinusoidal"
            self.position = SinusoidalPositions(arch.max_seq_length, arch.hidden_size, scaled)
        else:
            raise ConfigError(
                f"Unknown arch.position_embedding '{arch.position_embedding}'. "
                "Allowed: scaled-sinusoidal, sinusoidal, learned"
            )
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
        x = self.word(input_ids) + self.position(seq_len)
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        if self.norm is not None:
            x = self.norm(x)
        return self.dropout(x)


def eager_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) V written out; ``mask`` is boolean, True = attend."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
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


def _flash_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """flash-attn on [B, L, nh, hd] tensors; with a padding mask, via the varlen kernel
    (data-dependent shapes: eager only, see :meth:`SelfAttention._use_flash`)."""
    if mask is None:
        return flash_attn_func(q, k, v, dropout_p=dropout_p)
    batch, seq_len, heads, head_dim = q.shape
    keep = mask.reshape(batch, seq_len)
    # Pack the kept tokens of all rows back to back (order within a row is preserved).
    index = keep.flatten().nonzero().squeeze(1)
    lengths = keep.sum(dim=1, dtype=torch.int32)
    cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    max_len = int(lengths.max())
    q, k, v = (t.reshape(batch * seq_len, heads, head_dim)[index] for t in (q, k, v))
    packed = flash_attn_varlen_func(
        q, k, v, cu_seqlens, cu_seqlens, max_len, max_len, dropout_p=dropout_p
    )
    out = packed.new_zeros(batch * seq_len, heads, head_dim)
    out[index] = packed
    return out.view(batch, seq_len, heads, head_dim)


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention with one fused QKV projection."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        if arch.hidden_size % arch.num_heads:
            raise ConfigError(
                f"arch.hidden_size={arch.hidden_size} must be divisible by "
                f"arch.num_heads={arch.num_heads}"
            )
        self.num_heads = arch.num_heads
        self.head_dim = arch.hidden_size // arch.num_heads
        self.impl = arch.attention_impl
        self.attention_dropout = arch.attention_dropout
        self.qkv = nn.Linear(arch.hidden_size, 3 * arch.hidden_size, bias=arch.linear_bias)
        self.out = nn.Linear(arch.hidden_size, arch.hidden_size, bias=arch.linear_bias)
        require_flash_attn(self.impl)

    def _use_flash(self, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
        if self.impl == "flash-attn" and mask is not None and torch.compiler.is_compiling():
            # The varlen packing has data-dependent shapes (nonzero, max length): under
            # torch.compile padded batches take SDPA with the same boolean mask instead.
            return False
        return use_flash_attn(self.impl, x, mask is None)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: [B, L, H]; ``mask``: boolean [B, 1, 1, L], True = attend to that key."""
        batch, seq_len, hidden = x.shape
        qkv = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        dropout_p = self.attention_dropout if self.training else 0.0
        if self._use_flash(qkv, mask):
            q, k, v = qkv.unbind(dim=2)  # [B, L, nh, hd]: flash-attn's layout
            y = _flash_attention(q, k, v, mask, dropout_p)
        else:
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(dim=0)  # [B, nh, L, hd]
            if self.impl == "eager":
                y = eager_attention(q, k, v, mask, dropout_p)
            else:
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
            y = y.transpose(1, 2)
        return self.out(y.reshape(batch, seq_len, hidden))


def _activation_backward(name: str, grad: torch.Tensor, inp: torch.Tensor,
                         out: torch.Tensor) -> None:
    """Write d act(inp) / d inp * grad into ``out`` (a strided view) without a temporary."""
    if name == "gelu":
        torch.ops.aten.gelu_backward.grad_input(grad, inp, grad_input=out)
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
    """``mlp``: Linear -> act -> Linear; ``glu``: Linear(h, 2i) -> act(a) * b -> Linear(i, h)."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        if arch.ffn not in ("glu", "mlp"):
            raise ConfigError(f"Unknown arch.ffn '{arch.ffn}'. Allowed: glu, mlp")
        self.glu = arch.ffn == "glu"
        width = arch.intermediate_size * (2 if self.glu else 1)
        self.act = activation_fn(arch.activation)
        self.activation = arch.activation
        self.inp = nn.Linear(arch.hidden_size, width, bias=arch.linear_bias)
        self.out = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=arch.linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        if self.glu:
            x = gated_activation(x, self.activation)
        else:
            x = self.act(x)
        return self.out(x)


class TransformerLayer(nn.Module):
    """Attention + FFN sublayers with residuals, normalized before (pre) or after (post)."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        if arch.norm_scheme not in ("pre", "post"):
            raise ConfigError(f"Unknown arch.norm_scheme '{arch.norm_scheme}'. Allowed: pre, post")
        self.pre_norm = arch.norm_scheme == "pre"
        self.norm1 = make_norm(arch)
        self.attn = SelfAttention(arch)
        self.norm2 = make_norm(arch)
        self.ffn = FeedForward(arch)
        self.dropout = nn.Dropout(arch.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attn(self.norm1(x), mask))
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attn(x, mask)))
        return self.norm2(x + self.dropout(self.ffn(x)))


class PredictionHead(nn.Module):
    """The transform before the decoder: ``bert`` = Linear -> act -> norm (BERT's MLM head);
    ``linear`` = the Linear alone (old Cramming's ScriptableMaskedLM head, NTNG bert-c5)."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        if arch.prediction_head_type not in ("bert", "linear"):
            raise ConfigError(f"Unknown arch.prediction_head_type '{arch.prediction_head_type}'."
                              " Allowed: bert, linear")
        self.dense = nn.Linear(arch.hidden_size, arch.hidden_size, bias=arch.linear_bias)
        bert = arch.prediction_head_type == "bert"
        self.act = activation_fn(arch.activation) if bert else None
        self.norm = make_norm(arch) if bert else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dense(x)
        return x if self.norm is None else self.norm(self.act(x))
