"""BERT text encoder whose top layers cross-attend to video tokens (the matching decoder).

Parameter names follow Hugging Face BERT (`text_encoder.bert.*` in the checkpoint). Layers
`[0, fusion_layer)` encode text alone; layers `[fusion_layer, num_hidden_layers)` add a
cross-attention to the vision tokens between self-attention and the FFN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .vision import AttnImpl, attention

#: Additive value for masked key positions, as in the reference (-10000, not -inf).
MASK_VALUE = -10000.0


class SelfOrCrossAttention(nn.Module):
    """`query/key/value` projections; keys and values may come from another modality."""

    def __init__(self, cfg: TextConfig, kv_dim: int) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(kv_dim, h)
        self.value = nn.Linear(kv_dim, h)

    def forward(
        self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None, impl: AttnImpl
    ) -> torch.Tensor:
        b, n, h = x.shape
        d = h // self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, t.shape[1], self.num_heads, d).transpose(1, 2)

        q, k, v = heads(self.query(x)), heads(self.key(kv)), heads(self.value(kv))
        return attention(q, k, v, d**-0.5, mask, impl).transpose(1, 2).reshape(b, n, h)


class AddNorm(nn.Module):
    """Post-LN residual: `LayerNorm(dense(x) + residual)`."""

    def __init__(self, in_dim: int, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(in_dim, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class AttentionBlock(nn.Module):
    def __init__(self, cfg: TextConfig, kv_dim: int) -> None:
        super().__init__()
        self.self = SelfOrCrossAttention(cfg, kv_dim)
        self.output = AddNorm(cfg.hidden_size, cfg)

    def forward(self, x, kv, mask, impl: AttnImpl) -> torch.Tensor:
        return self.output(self.self(x, kv, mask, impl), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, cfg: TextConfig, vision_dim: int | None) -> None:
        super().__init__()
        self.attention = AttentionBlock(cfg, cfg.hidden_size)
        self.crossattention = AttentionBlock(cfg, vision_dim) if vision_dim else None
        self.intermediate = Intermediate(cfg)
        self.output = AddNorm(cfg.intermediate_size, cfg)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        vision: torch.Tensor | None,
        impl: AttnImpl,
    ) -> torch.Tensor:
        x = self.attention(x, x, mask, impl)
        if self.crossattention is not None:
            if vision is None:
                raise ValueError("a fusion layer needs vision tokens")
            # Every vision token is valid: no mask.
            x = self.crossattention(x, vision, None, impl)
        return self.output(self.intermediate(x), x)


class Embeddings(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        length = input_ids.shape[1]
        positions = torch.arange(length, device=input_ids.device)
        # Token types are all zero in retrieval. Summation order as in the reference.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings(positions)[None]
        return self.LayerNorm(x)


class Encoder(nn.Module):
    def __init__(self, cfg: TextConfig, vision_dim: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(
            BertLayer(cfg, vision_dim if i >= cfg.fusion_layer else None)
            for i in range(cfg.num_hidden_layers)
        )


class Bert(nn.Module):
    def __init__(self, cfg: TextConfig, vision_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg, vision_dim)
        self.impl: AttnImpl = "sdpa"

    @staticmethod
    def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """`[B, L]` 1/0 mask → additive `[B, 1, 1, L]` (masked keys get -10000)."""
        return ((1.0 - attention_mask[:, None, None, :].to(dtype)) * MASK_VALUE).to(dtype)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Run the text-only layers; returns hidden states `[B, L, H]` at every position."""
        if input_ids.shape[1] > self.cfg.max_position_embeddings:
            raise ValueError(
                f"{input_ids.shape[1]} tokens > {self.cfg.max_position_embeddings} positions"
            )
        x = self.embeddings(input_ids)
        mask = self.additive_mask(attention_mask, x.dtype)
        for layer in self.encoder.layer[: self.cfg.fusion_layer]:
            x = layer(x, mask, None, self.impl)
        return x

    def fuse(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, vision: torch.Tensor
    ) -> torch.Tensor:
        """Run the fusion layers on text hidden states, cross-attending to `vision` tokens."""
        mask = self.additive_mask(attention_mask, hidden.dtype)
        x = hidden
        for layer in self.encoder.layer[self.cfg.fusion_layer :]:
            x = layer(x, mask, vision.to(hidden.dtype), self.impl)
        return x


class TextEncoder(nn.Module):
    """Holds `bert` so parameter names read `text_encoder.bert.*` like the checkpoint."""

    def __init__(self, cfg: TextConfig, vision_dim: int) -> None:
        super().__init__()
        self.bert = Bert(cfg, vision_dim)
