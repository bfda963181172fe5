"""A decoder/encoder transformer that attends causally or bidirectionally per call.

One implementation behind the ``gpt``, ``llama`` and ``ltg-bert`` model types (their
classes live in :mod:`.gpt`, :mod:`.llama` and :mod:`.ltg_bert`). It keeps the
:class:`~cramming.architectures.base.MaskedLMModel` contract (``encode`` / ``predict`` /
``forward(input_ids, labels, ...)`` returning loss, logits, counts) and adds keyword
arguments that objectives pass through ``Microbatch.model_kwargs``:

* ``causal``: True = no position attends to a later one (CLM), False = bidirectional
  (MLM / MNTP), None = ``arch.causal``;
* ``document_ids`` [B, L]: positions attend only within their document;
* ``z_loss``: adds ``z_loss * mean(logsumexp(logits)^2)`` over predicted positions.

Labels are aligned with positions: ``labels[b, t]`` is what position ``t`` must predict
(next token for CLM / MNTP, the token itself for plain MLM). The model never shifts.

Attention runs through ``F.scaled_dot_product_attention``: with ``is_causal`` when
nothing else restricts it, otherwise with a boolean (padding / document) or float
(relative-position bias) mask. With ``arch.attention_impl`` flash-attn (or auto and the
package installed) unmasked attention on CUDA in fp16/bf16 uses ``flash_attn_func``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cramming.architectures.base import MaskedLMModel
from cramming.architectures.components import (
    LearnedPositions,
    PredictionHead,
    SinusoidalPositions,
    activation_fn,
    flash_attn_func,
    gated_activation,
    make_norm,
    require_flash_attn,
    use_flash_attn,
)
from cramming.architectures.flops import head_matmul_params
from cramming.config.schema import ArchConfig
from cramming.errors import ConfigError, CrammingError


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension (the RoPE pairing of GPT-NeoX/Llama)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding: rotates query/key pairs by position-dependent angles.

    ``q_m . k_n`` then depends on positions only through ``m - n`` (relative property).
    """

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
    """[L, L] indices in ``[0, 2 * buckets - 1)`` of the bucketed offset ``j - i``.

    Offsets below ``buckets // 2`` keep their own bucket; longer ones share log-spaced
    buckets up to ``max_len`` (LTG-BERT / DeBERTa style).
    """
    position = torch.arange(seq_len, device=device)
    offset = position[None, :] - position[:, None]
    mid = max(buckets // 2, 1)
    magnitude = offset.abs().clamp(min=1).float()
    span = max(math.log(max(max_len, mid + 1) / mid), 1e-6)
    log_bucket = mid + (torch.log(magnitude / mid) / span * (buckets - mid)).floor().long()
    bucket = torch.where(offset.abs() < mid, offset.abs(), log_bucket.clamp(max=buckets - 1))
    return torch.sign(offset) * bucket + buckets - 1


class RelativePositions(nn.Module):
    """Learned embeddings of bucketed relative offsets, shared by all layers."""

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.buckets, self.max_len = arch.position_buckets, arch.max_seq_length
        self.embedding = nn.Embedding(2 * arch.position_buckets - 1, arch.hidden_size)
        self.norm = make_norm(arch)
        index = relative_buckets(arch.max_seq_length, self.buckets, self.max_len)
        self.register_buffer("index", index, persistent=False)

    def forward(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised bucket embeddings [2B-1, H] and the [L, L] bucket index."""
        return self.norm(self.embedding.weight), self.index[:seq_len, :seq_len]


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention with optional RoPE or relative bias."""

    def __init__(self, arch: ArchConfig, extra_norm: bool = False) -> None:
        super().__init__()
        self.num_heads = arch.num_heads
        self.num_kv_heads = arch.num_kv_heads or arch.num_heads
        self.head_dim = arch.hidden_size // arch.num_heads
        self.attention_dropout = arch.attention_dropout
        width = (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
        self.qkv = nn.Linear(arch.hidden_size, width, bias=arch.linear_bias)
        self.out = nn.Linear(self.num_heads * self.head_dim, arch.hidden_size,
                             bias=arch.linear_bias)
        self.norm = make_norm_width(arch, self.num_heads * self.head_dim) if extra_norm else None
        self.impl = arch.attention_impl
        require_flash_attn(self.impl)
        if self.impl == "flash-attn" and arch.position_embedding == "relative":
            raise ConfigError("arch.attention_impl=flash-attn cannot add the relative-position "
                              "bias (position_embedding=relative); use attention_impl=sdpa.")

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, seq_len, _ = x.shape
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        q, k, v = x.split([q_width, kv_width, kv_width], dim=-1)
        q = q.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq_len, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                rope: RotaryEmbedding | None = None,
                relative: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """``x`` [B, L, H]; ``mask`` boolean [B|1, 1, L, L] (True = attend) or None."""
        batch, seq_len, _ = x.shape
        q, k, v = self._split(self.qkv(x))
        if rope is not None:
            q, k = rope(q), rope(k)
        dropout_p = self.attention_dropout if self.training else 0.0
        # flash-attn (installed and requested, or auto): only without a padding / document
        # mask or relative bias; it takes grouped K/V heads as they are.
        if mask is None and relative is None and use_flash_attn(self.impl, q, True):
            y = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                dropout_p=dropout_p, causal=is_causal)
            y = y.reshape(batch, seq_len, self.num_heads * self.head_dim)
            return self.out(self.norm(y) if self.norm is not None else y)
        if self.num_kv_heads != self.num_heads:
            repeat = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        scale = None
        if relative is not None:
            mask, scale = self._relative_bias(q, k, relative, mask, is_causal), \
                (3 * self.head_dim) ** -0.5
            is_causal = False
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                           is_causal=is_causal and mask is None, scale=scale)
        y = y.transpose(1, 2).reshape(batch, seq_len, self.num_heads * self.head_dim)
        if self.norm is not None:
            y = self.norm(y)
        return self.out(y)

    def _relative_bias(self, q: torch.Tensor, k: torch.Tensor,
                       relative: tuple[torch.Tensor, torch.Tensor],
                       mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
        """Float mask: content-to-position + position-to-content scores (DeBERTa/LTG-BERT)."""
        table, index = relative
        seq_len = q.shape[-2]
        q_width, kv_width = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        projected = F.linear(table, self.qkv.weight)  # [P, width], biases not applied
        pos_q, pos_k, _ = projected.split([q_width, kv_width, kv_width], dim=-1)
        pos_q = pos_q.view(-1, self.num_heads, self.head_dim).transpose(0, 1)  # [nh, P, hd]
        pos_k = pos_k.view(-1, self.num_kv_heads, self.head_dim).transpose(0, 1)
        if self.num_kv_heads != self.num_heads:
            pos_k = pos_k.repeat_interleave(self.num_heads // self.num_kv_heads, dim=0)
        pos_q, pos_k = pos_q.to(q.dtype), pos_k.to(q.dtype)
        expand = index.expand(*q.shape[:2], seq_len, seq_len)
        c2p = torch.gather(q @ pos_k.transpose(-1, -2), -1, expand)  # [B, nh, Lq, Lk]
        p2c = torch.gather(k @ pos_q.transpose(-1, -2), -1, expand.transpose(-1, -2))
        bias = (c2p + p2c.transpose(-1, -2)) * (3 * self.head_dim) ** -0.5
        if is_causal:
            future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=q.device).triu(1)
            bias = bias.masked_fill(future, float("-inf"))
        if mask is not None:
            bias = bias.masked_fill(~mask, float("-inf"))
        return bias


def make_norm_width(arch: ArchConfig, width: int) -> nn.Module:
    """``arch.norm`` over ``width`` features (for norms inside a sublayer)."""
    if arch.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=arch.norm_eps)
    return nn.LayerNorm(width, eps=arch.norm_eps)


class FeedForward(nn.Module):
    """``mlp``: act(W1 x); ``glu``: act(a) * b (SwiGLU / GEGLU); optional norm before W2."""

    def __init__(self, arch: ArchConfig, extra_norm: bool = False) -> None:
        super().__init__()
        self.glu = arch.ffn == "glu"
        self.activation = arch.activation
        self.act = activation_fn(arch.activation)
        width = arch.intermediate_size * (2 if self.glu else 1)
        self.inp = nn.Linear(arch.hidden_size, width, bias=arch.linear_bias)
        self.norm = make_norm_width(arch, arch.intermediate_size) if extra_norm else None
        self.out = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=arch.linear_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        x = gated_activation(x, self.activation) if self.glu else self.act(x)
        if self.norm is not None:
            x = self.norm(x)
        return self.out(x)


class Block(nn.Module):
    """Attention and feed-forward sublayers with residuals (pre- or post-norm)."""

    def __init__(self, arch: ArchConfig, extra_norms: bool = False) -> None:
        super().__init__()
        self.pre_norm = arch.norm_scheme == "pre"
        self.norm1 = make_norm(arch)
        self.attn = Attention(arch, extra_norms)
        self.norm2 = make_norm(arch)
        self.ffn = FeedForward(arch, extra_norms)
        self.dropout = nn.Dropout(arch.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                rope: RotaryEmbedding | None,
                relative: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.attn(self.norm1(x), mask, is_causal, rope, relative))
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.attn(x, mask, is_causal, rope, relative)))
        return self.norm2(x + self.dropout(self.ffn(x)))


def attention_mask_for(seq_len: int, causal: bool, attention_mask: torch.Tensor | None,
                       document_ids: torch.Tensor | None,
                       device: torch.device) -> torch.Tensor | None:
    """Boolean [B|1, 1, L, L] mask (True = may attend), or None when only ``causal`` applies."""
    if attention_mask is None and document_ids is None:
        return None
    mask = torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool, device=device)
    if causal:
        mask = mask.tril()
    if document_ids is not None:
        mask = mask & (document_ids[:, None, :, None] == document_ids[:, None, None, :])
    if attention_mask is not None:
        keep = attention_mask.bool()
        keep = keep | ~keep.any(dim=1, keepdim=True)  # all-padding rows: avoid NaN
        mask = mask & keep[:, None, None, :]
    # A query that may see no key at all (a padded query under a causal mask) sees itself.
    return mask | torch.eye(seq_len, dtype=torch.bool, device=device)


class TransformerLM(MaskedLMModel):
    """Embeddings -> N blocks -> final norm -> (head) -> decoder; causal or bidirectional."""

    extra_norms: bool = False  # LTG-BERT's additional norms inside attention and FFN

    def __init__(self, arch: ArchConfig, vocab_size: int, pad_token_id: int = 0) -> None:
        super().__init__()
        if arch.hidden_size % arch.num_heads:
            raise ConfigError(f"arch.hidden_size={arch.hidden_size} must be divisible by "
                              f"arch.num_heads={arch.num_heads}")
        kv_heads = arch.num_kv_heads or arch.num_heads
        if arch.num_heads % kv_heads:
            raise ConfigError(f"arch.num_kv_heads={kv_heads} must divide "
                              f"arch.num_heads={arch.num_heads}")
        if arch.ffn not in ("glu", "mlp"):
            raise ConfigError(f"Unknown arch.ffn '{arch.ffn}'. Allowed: glu, mlp")
        self.arch, self.vocab_size, self.hidden_size = arch, vocab_size, arch.hidden_size
        self.pad_token_id = pad_token_id
        self.word = nn.Embedding(vocab_size, arch.hidden_size)
        head_dim = arch.hidden_size // arch.num_heads
        self.positions: nn.Module | None = None
        self.rope: RotaryEmbedding | None = None
        self.relative: RelativePositions | None = None
        kind = arch.position_embedding
        if kind == "learned":
            self.positions = LearnedPositions(arch.max_seq_length, arch.hidden_size)
        elif kind in ("sinusoidal", "scaled-sinusoidal"):
            self.positions = SinusoidalPositions(arch.max_seq_length, arch.hidden_size,
                                                 scaled=kind == "scaled-sinusoidal")
        elif kind == "rope":
            self.rope = RotaryEmbedding(head_dim, arch.max_seq_length, arch.rope_theta)
        elif kind == "relative":
            self.relative = RelativePositions(arch)
        else:
            raise ConfigError(f"Unknown arch.position_embedding '{kind}'. Allowed: learned, "
                              "sinusoidal, scaled-sinusoidal, rope, relative")
        self.embedding_norm = make_norm(arch) if arch.embedding_norm else None
        self.dropout = nn.Dropout(arch.dropout)
        self.layers = nn.ModuleList(Block(arch, self.extra_norms)
                                    for _ in range(arch.num_layers))
        self.final_norm = make_norm(arch) if arch.final_norm else None
        self.head = PredictionHead(arch) if arch.prediction_head else None
        self.decoder = nn.Linear(arch.hidden_size, vocab_size, bias=arch.linear_bias)
        self.reset_parameters()
        if arch.tie_weights:
            self.decoder.weight = self.word.weight

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """normal(0, init_std); residual output projections scaled by 1/sqrt(2 N) (GPT-2)."""
        std = self.arch.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                if module.weight is not None:
                    nn.init.ones_(module.weight)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)
        residual_std = std / math.sqrt(2 * max(self.arch.num_layers, 1))
        for layer in self.layers:
            nn.init.normal_(layer.attn.out.weight, mean=0.0, std=residual_std)
            nn.init.normal_(layer.ffn.out.weight, mean=0.0, std=residual_std)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, causal: bool | None = None,
               document_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states [B, L, H]; ``attention_mask`` [B, L] with 1 = real token."""
        seq_len = input_ids.shape[1]
        if seq_len > self.arch.max_seq_length:
            raise CrammingError(
                f"Sequence length {seq_len} exceeds arch.max_seq_length="
                f"{self.arch.max_seq_length}; raise arch.max_seq_length or shorten the inputs.")
        causal = self.arch.causal if causal is None else bool(causal)
        x = self.word(input_ids)
        if self.positions is not None:
            x = x + self.positions(seq_len)
        if self.embedding_norm is not None:
            x = self.embedding_norm(x)
        x = self.dropout(x)
        mask = attention_mask_for(seq_len, causal, attention_mask, document_ids, x.device)
        relative = self.relative(seq_len) if self.relative is not None else None
        for layer in self.layers:
            x = layer(x, mask, causal, self.rope, relative)
        return self.final_norm(x) if self.final_norm is not None else x

    def predict(self, hidden: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits for hidden states [..., H]."""
        if self.head is not None:
            hidden = self.head(hidden)
        return self.decoder(hidden)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                return_per_example_loss: bool = False, causal: bool | None = None,
                document_ids: torch.Tensor | None = None,
                z_loss: float = 0.0) -> dict[str, torch.Tensor | None]:
        """Loss over positions whose label is not -100 (plus ``z_loss`` regulariser).

        Returns ``loss``, ``logits`` (decoded positions only with sparse prediction),
        ``num_predictions``, ``num_correct``, ``per_example_loss`` (if requested) and
        ``z_loss`` (the unweighted regulariser, None without labels).
        """
        hidden = self.encode(input_ids, attention_mask, token_type_ids, causal, document_ids)
        return self.outputs_from_hidden(hidden, labels, return_per_example_loss, z_loss)

    def flops_per_token(self, seq_length: int, num_predicted_fraction: float) -> float:
        """Training FLOPs per token, counting grouped-query K/V projections at their width."""
        arch = self.arch
        h, i = arch.hidden_size, arch.intermediate_size
        kv = (arch.num_kv_heads or arch.num_heads) * (h // arch.num_heads)
        layer = 2 * h * h + 2 * h * kv + (3 if arch.ffn == "glu" else 2) * h * i
        body = arch.num_layers * (layer + 2 * seq_length * h)
        fraction = num_predicted_fraction if arch.sparse_prediction else 1.0
        return 6.0 * (body + fraction * head_matmul_params(arch, self.vocab_size))
