"""Configuration of the InternVideo2 stage-2 model (vision encoder, BERT text/fusion, projections).

Field names follow the reference implementation's `config.json` layout (see
`tests/data/internvideo2_tiny/config.json`), so a config can be read from such a file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Name of the official checkpoint these defaults describe.
STAGE2_1B_NAME = "InternVideo2-Stage2_1B-224p-f4"
#: Name of the small random test model (`InternVideo2Config.tiny_random`).
TINY_RANDOM = "tiny-random"
#: Name of the small model trained on the sample catalog (`InternVideo2Config.demo_shapes`).
DEMO_SHAPES = "demo-shapes"
#: Entries of the `demo-shapes` WordPiece vocabulary (special tokens, characters, the
#: sample catalog's caption words): the size of its text embedding table.
DEMO_SHAPES_VOCAB_SIZE = 114


@dataclass(frozen=True)
class VisionConfig:
    """The ViT video encoder and its attention-pooling projector (prefix `vision_encoder.`)."""

    img_size: int = 224
    patch_size: int = 14
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_ratio: float = 48 / 11
    clip_embed_dim: int = 768
    attn_pool_num_heads: int = 16
    # Distillation heads: present in the checkpoint, never built (see checkpoint.IGNORED_KEYS).
    clip_teacher_embed_dim: int = 3200
    clip_teacher_final_dim: int = 768
    clip_return_layer: int = 6
    tubelet_size: int = 1
    qkv_bias: bool = False
    qk_normalization: bool = True
    sep_image_video_pos_embed: bool = True
    rmsnorm_eps: float = 1e-6
    attn_pool_layernorm_eps: float = 1e-5
    num_frames: int = 4

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(f"img_size {self.img_size} not divisible by patch {self.patch_size}")
        if self.embed_dim % self.num_heads or self.embed_dim % self.attn_pool_num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by the head counts")
        if self.tubelet_size != 1:
            raise ValueError("only tubelet_size=1 (the stage-2 checkpoints) is supported")
        if not self.qk_normalization or self.qkv_bias or not self.sep_image_video_pos_embed:
            raise ValueError("stage-2 models use QK-norm, no qkv bias and separate image pos-embed")
        if not 1 <= self.num_frames <= 64:
            raise ValueError(f"num_frames must be in 1..64, got {self.num_frames}")

    @property
    def patches_per_frame(self) -> int:
        return (self.img_size // self.patch_size) ** 2

    @property
    def mlp_hidden_dim(self) -> int:
        # The reference floors dim * ratio (48/11 * 1408 = 6144, 48/11 * 64 = 279).
        return int(self.embed_dim * self.mlp_ratio)

    def num_tokens(self, num_frames: int) -> int:
        """Tokens the encoder produces for `num_frames` frames: cls + patches."""
        return 1 + self.patches_per_frame * num_frames


@dataclass(frozen=True)
class TextConfig:
    """BERT: layers `[0, fusion_layer)` encode text, the rest cross-attend to video tokens."""

    vocab_size: int = 30522
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    max_position_embeddings: int = 512
    fusion_layer: int = 19
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    type_vocab_size: int = 2

    def __post_init__(self) -> None:
        if not 0 < self.fusion_layer < self.num_hidden_layers:
            raise ValueError(
                f"fusion_layer {self.fusion_layer} must be inside (0, {self.num_hidden_layers})"
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size not divisible by num_attention_heads")


@dataclass(frozen=True)
class InternVideo2Config:
    """The whole stage-2 model: vision, text and the shared embedding width."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    name: str = STAGE2_1B_NAME

    @classmethod
    def stage2_1b(cls, num_frames: int = 4) -> InternVideo2Config:
        """The official `InternVideo2-Stage2_1B-224p-f4` dimensions."""
        return cls(vision=VisionConfig(num_frames=num_frames), text=TextConfig())

    @classmethod
    def tiny_random(cls, num_frames: int = 4, vocab_size: int = 30522) -> InternVideo2Config:
        """A small model for tests and the demo, with the production input and output shapes.

        224-px frames and 512-d embeddings like the 1B model (the table schema does not
        change), but 32-px patches, two 64-d blocks and a 3-layer 32-d BERT, so a CPU embeds
        hundreds of clips per second. Its weights are random: never a production model.
        """
        vision = VisionConfig(
            patch_size=32,
            embed_dim=64,
            depth=2,
            num_heads=4,
            clip_embed_dim=32,
            attn_pool_num_heads=4,
            clip_teacher_embed_dim=48,
            clip_teacher_final_dim=32,
            clip_return_layer=1,
            num_frames=num_frames,
        )
        text = TextConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=3,
            num_attention_heads=4,
            intermediate_size=64,
            max_position_embeddings=64,
            fusion_layer=2,
        )
        return cls(vision=vision, text=text, embed_dim=512, name=TINY_RANDOM)

    def random_digest(self, seed: int) -> str:
        """`random:seed<seed>:<config hash>`: the weights identity of a random model."""
        cfg = json.dumps(self.to_dict(), sort_keys=True).encode()
        return f"random:seed{seed}:{hashlib.sha256(cfg).hexdigest()[:12]}"

    @staticmethod
    def seed_of_random_digest(digest: str) -> int | None:
        """The seed named by a :meth:`random_digest`, None for another digest."""
        match = re.fullmatch(r"random:seed(\d+):[0-9a-f]+", digest)
        return int(match.group(1)) if match else None

    @classmethod
    def demo_shapes(
        cls, num_frames: int = 4, vocab_size: int = DEMO_SHAPES_VOCAB_SIZE
    ) -> InternVideo2Config:
        """The `demo-shapes` model, trained on the synthetic sample catalog.

        Same input and output shapes as the 1B model (224-px frames, 512-d embeddings) and
        tiny-random's vision tower (32-px patches, two 64-d blocks); its BERT is 64-d with
        two text layers and two matching-decoder layers (tiny-random: 32-d, 2 + 1), enough
        for the matching head to check four attributes. The default `vocab_size` is that of
        its vocabulary (`weights/demo-shapes.vocab.txt`). It knows only the synthetic
        shapes: never a production model.
        """
        base = cls.tiny_random(num_frames=num_frames, vocab_size=vocab_size)
        text = dataclasses.replace(
            base.text, hidden_size=64, intermediate_size=128, num_hidden_layers=4, fusion_layer=2
        )
        return dataclasses.replace(base, text=text, name=DEMO_SHAPES)

    def with_num_frames(self, num_frames: int) -> InternVideo2Config:
        return dataclasses.replace(
            self, vision=dataclasses.replace(self.vision, num_frames=num_frames)
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InternVideo2Config:
        """Build from the reference layout: `vision_encoder`, `text_encoder`, `embed_dim`.

        Unknown keys (descriptive notes such as `hidden_act`) are ignored with a debug log;
        `num_frames` may sit at the top level or inside `vision_encoder`.
        """
        vision_in = dict(data.get("vision_encoder") or data.get("vision") or {})
        if "num_frames" in data:
            vision_in.setdefault("num_frames", data["num_frames"])
        text_in = dict(data.get("text_encoder") or data.get("text") or {})
        return cls(
            vision=VisionConfig(**_known(VisionConfig, vision_in)),
            text=TextConfig(**_known(TextConfig, text_in)),
            embed_dim=int(data.get("embed_dim", 512)),
            name=str(data.get("name", "internvideo2-custom")),
        )

    @classmethod
    def from_json(cls, path: str | Path) -> InternVideo2Config:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_frames": self.vision.num_frames,
            "vision_encoder": dataclasses.asdict(self.vision),
            "text_encoder": dataclasses.asdict(self.text),
            "embed_dim": self.embed_dim,
        }


def _known(kind: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(values) - names)
    if unknown:
        logger.debug("ignoring %s config keys %s", kind.__name__, unknown)
    return {k: v for k, v in values.items() if k in names}
