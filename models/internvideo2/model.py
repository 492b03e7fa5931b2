"""InternVideo2 stage-2: video/text encoders, projections to the shared space, matching head."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from .config import InternVideo2Config
from .text import TextEncoder
from .vision import AttnImpl, VisionEncoder

logger = logging.getLogger(__name__)


class InternVideo2(nn.Module):
    """Dual encoder plus the video-text matching decoder.

    Parameter names equal the official checkpoint's (`vision_encoder.*`,
    `text_encoder.bert.*`, `vision_proj`, `text_proj`, `itm_head`).
    """

    def __init__(self, config: InternVideo2Config) -> None:
        super().__init__()
        self.config = config
        self.vision_encoder = VisionEncoder(config.vision)
        self.text_encoder = TextEncoder(config.text, config.vision.embed_dim)
        self.vision_proj = nn.Linear(config.vision.clip_embed_dim, config.embed_dim)
        self.text_proj = nn.Linear(config.text.hidden_size, config.embed_dim)
        self.itm_head = nn.Linear(config.text.hidden_size, 2)

    @property
    def num_frames(self) -> int:
        return self.config.vision.num_frames

    @property
    def device(self) -> torch.device:
        return self.vision_proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_proj.weight.dtype

    def set_attention_impl(self, impl: AttnImpl) -> None:
        """`"sdpa"` (fused kernels, default) or `"math"` (the reference's explicit softmax)."""
        self.vision_encoder.set_attention_impl(impl)
        self.text_encoder.bert.impl = impl

    def compile_blocks(self, **compile_kwargs) -> None:
        """`torch.compile` each vision block separately (one graph reused 40 times).

        Compiling block by block keeps compile time to about one block's and fuses the
        RMSNorm / LayerScale / GELU element-wise work around the matmuls.
        """
        import torch._dynamo

        # Each block is a separate module; make sure the graph cache can hold all of them
        # rather than silently falling back to eager after the default recompile limit.
        limit = 2 * len(self.vision_encoder.blocks)
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), limit))
        for i, block in enumerate(self.vision_encoder.blocks):
            self.vision_encoder.blocks[i] = torch.compile(block, **compile_kwargs)

    def video_features(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision tokens and pooled features.

        Args:
            pixels: normalized float `[B, T, 3, H, W]`; T == 1 takes the image path.

        Returns:
            tokens `[B, 1 + N, C]` (what the matching decoder attends to) and pooled
            `[B, clip_embed_dim]`.
        """
        return self.vision_encoder(pixels.to(self.device))

    def project_video(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled vision features `[B, clip_embed_dim]` → L2-normalized `[B, embed_dim]`."""
        return F.normalize(self.vision_proj(pooled), dim=-1)

    def encode_video(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalized float `[B, T, 3, H, W]` → L2-normalized embeddings `[B, embed_dim]`."""
        return self.project_video(self.video_features(pixels)[1])

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed token ids.

        Args:
            input_ids: int `[B, L]` WordPiece ids (padded).
            attention_mask: `[B, L]`, 1 for real tokens, 0 for padding.

        Returns:
            L2-normalized embedding `[B, embed_dim]` and the text-only layers' hidden
            states `[B, L, H]` (input of :meth:`match_logits`).
        """
        input_ids = input_ids.to(self.device)
        attention_mask = attention_mask.to(self.device)
        hidden = self.text_encoder.bert.encode_text(input_ids, attention_mask)
        return F.normalize(self.text_proj(hidden[:, 0]), dim=-1), hidden

    def match_logits(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, video_tokens: torch.Tensor
    ) -> torch.Tensor:
        """Video-text matching logits for N aligned (text, video) pairs.

        Args:
            hidden: `[N, L, H]` text hidden states from :meth:`encode_text`.
            attention_mask: `[N, L]` the texts' padding masks.
            video_tokens: `[N, 1 + M, C]` vision tokens from :meth:`video_features`.

        Returns:
            `[N, 2]` logits; index 1 is "match" (the re-ranking score).
        """
        if not hidden.shape[0] == attention_mask.shape[0] == video_tokens.shape[0]:
            raise ValueError(
                f"pairs must align: {hidden.shape[0]} texts, {attention_mask.shape[0]} masks, "
                f"{video_tokens.shape[0]} videos"
            )
        dev = self.device
        fused = self.text_encoder.bert.fuse(
            hidden.to(dev, self.dtype), attention_mask.to(dev), video_tokens.to(dev)
        )
        return self.itm_head(fused[:, 0])
