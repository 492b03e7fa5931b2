"""InternVideo2 vision encoder: a ViT over space-time patches with QK-norm and attention pooling.

Module and parameter names mirror the official checkpoint (`vision_encoder.*`), so its state
dict loads without renaming. The distillation heads of the checkpoint are not built.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .config import VisionConfig

AttnImpl = Literal["sdpa", "math"]


class RMSNorm(nn.Module):
    """Root-mean-square norm, weight only, computed in float32 and cast back before the weight."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LayerScale(nn.Module):
    """Per-channel residual-branch scale, applied in float32 as in the reference."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() * self.gamma.float()).to(x.dtype)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    mask: torch.Tensor | None = None,
    impl: AttnImpl = "sdpa",
) -> torch.Tensor:
    """Softmax attention over `[B, H, N, D]` tensors; `mask` is additive, broadcastable.

    `"math"` spells out the reference's `softmax(q*scale @ k^T) @ v`; `"sdpa"` calls the
    fused kernel (within 1e-6 of it in float32).
    """
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    scores = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores + mask
    return scores.softmax(dim=-1) @ v


class Attention(nn.Module):
    """Self-attention with QK-norm over all channels (before the head split), no qkv bias."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.num_heads = cfg.num_heads
        self.scale = (dim // cfg.num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_norm = RMSNorm(dim, cfg.rmsnorm_eps)
        self.k_norm = RMSNorm(dim, cfg.rmsnorm_eps)
        self.proj = nn.Linear(dim, dim)
        self.impl: AttnImpl = "sdpa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = self.q_norm(q), self.k_norm(k)
        heads = (b, n, self.num_heads, c // self.num_heads)
        q, k, v = (t.reshape(heads).transpose(1, 2) for t in (q, k, v))
        out = attention(q, k, v, self.scale, impl=self.impl)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Exact (erf) GELU: the golden tensors use it; tanh would miss them by ~1e-5.
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.norm1 = RMSNorm(cfg.embed_dim, cfg.rmsnorm_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.embed_dim)
        self.norm2 = RMSNorm(cfg.embed_dim, cfg.rmsnorm_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden_dim)
        self.ls2 = LayerScale(cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Conv3d with kernel = stride = (tubelet, patch, patch): `[B, 3, T, H, W]` → `[B, T*L, C]`."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv3d(3, cfg.embed_dim, (cfg.tubelet_size, p, p), (cfg.tubelet_size, p, p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # [B, C, T, h, w]
        # Frame-major, then row-major within a frame.
        return x.flatten(2).transpose(1, 2)


class CrossAttention(nn.Module):
    """Pooling attention: q/k/v projections without bias, biases as separate parameters."""

    def __init__(self, dim: int, num_heads: int, out_dim: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.k_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, out_dim)
        self.impl: AttnImpl = "sdpa"

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, nq, c = q.shape
        nk = k.shape[1]
        d = c // self.num_heads
        q = (
            F.linear(q, self.q.weight, self.q_bias)
            .reshape(b, nq, self.num_heads, d)
            .transpose(1, 2)
        )
        k = (
            F.linear(k, self.k.weight, self.k_bias)
            .reshape(b, nk, self.num_heads, d)
            .transpose(1, 2)
        )
        v = (
            F.linear(v, self.v.weight, self.v_bias)
            .reshape(b, nk, self.num_heads, d)
            .transpose(1, 2)
        )
        out = attention(q, k, v, self.scale, impl=self.impl)
        return self.proj(out.transpose(1, 2).reshape(b, nq, c))


class AttentionPooling(nn.Module):
    """`clip_projector`: the token mean queries all tokens; one output vector per video."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        dim, eps = cfg.embed_dim, cfg.attn_pool_layernorm_eps
        self.norm1_q = nn.LayerNorm(dim, eps=eps)
        self.norm1_k = nn.LayerNorm(dim, eps=eps)
        self.norm1_v = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = CrossAttention(dim, cfg.attn_pool_num_heads, cfg.clip_embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.norm1_q(x.mean(1, keepdim=True))
        return self.cross_attn(q, self.norm1_k(x), self.norm1_v(x)).squeeze(1)


class VisionEncoder(nn.Module):
    """ViT over `[B, T, 3, H, W]` frames; T == 1 uses the image position embedding."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens(cfg.num_frames), c))
        self.img_pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens(1), c))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.clip_projector = AttentionPooling(cfg)

    def set_attention_impl(self, impl: AttnImpl) -> None:
        for m in self.modules():
            if isinstance(m, Attention | CrossAttention):
                m.impl = impl

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode normalized frames.

        Args:
            pixels: float `[B, T, 3, H, W]`, ImageNet-normalized.

        Returns:
            tokens `[B, 1 + L*T, C]` (output of the last block) and pooled `[B, clip_embed_dim]`.
        """
        if pixels.ndim != 5 or pixels.shape[2] != 3:
            raise ValueError(f"expected pixels [B, T, 3, H, W], got {tuple(pixels.shape)}")
        b, t = pixels.shape[:2]
        if t == 1:
            pos = self.img_pos_embed
        elif t == self.cfg.num_frames:
            pos = self.pos_embed
        else:
            raise ValueError(
                f"model built for {self.cfg.num_frames} frames (or 1 for images), got {t}; "
                "load it with num_frames to interpolate the position embedding"
            )
        x = self.patch_embed(pixels.permute(0, 2, 1, 3, 4).to(self.cls_token.dtype))
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        if x.shape[1] != pos.shape[1]:
            raise ValueError(f"{x.shape[1]} tokens but {pos.shape[1]} positions: check img_size")
        x = x + pos
        for block in self.blocks:
            x = block(x)
        return x, self.clip_projector(x)
