"""Which model embeds a catalog: the named models vidcat knows and how to build each.

:class:`ModelSpec` is configuration (frozen, validated, JSON-able); it imports torch only
when a model is built, so a reader that only compares identities (a `similar` query, a
report) never loads it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.internvideo2.config import DEMO_SHAPES, TINY_RANDOM, InternVideo2Config

from .storage import S3Config

if TYPE_CHECKING:
    import torch

    from models.internvideo2 import InternVideo2

INTERNVIDEO2_1B = "internvideo2-1b"
#: Every `--model` choice.
MODEL_NAMES = (INTERNVIDEO2_1B, DEMO_SHAPES, TINY_RANDOM)
#: The bundled `demo-shapes` weights and vocabulary (package data of models.internvideo2).
DEMO_WEIGHTS = Path(__file__).resolve().parents[1] / "models" / "internvideo2" / "weights"
DEMO_CHECKPOINT = DEMO_WEIGHTS / f"{DEMO_SHAPES}.pt"
DEMO_VOCAB = DEMO_WEIGHTS / f"{DEMO_SHAPES}.vocab.txt"


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to embed with. Production names a checkpoint; tests use `tiny-random`.

    Attributes:
        model: `internvideo2-1b` (needs `checkpoint`), `demo-shapes` (small weights bundled
            with vidcat, trained on the synthetic sample catalog only) or `tiny-random`
            (random weights). Every row's `model` column names it; never a silent fallback.
        checkpoint: local path, `s3://` URI or hub id (`repo@revision`) of the 1B weights;
            for `demo-shapes`, another training run's `demo-shapes.pt` (default: the
            bundled one).
        num_frames: frames per clip (T); the checkpoint's `pos_embed` is interpolated.
        s3: endpoint, region and retries for an `s3://` checkpoint.
        seed: weights seed of `tiny-random`.
    """

    model: str = INTERNVIDEO2_1B
    checkpoint: str | None = None
    num_frames: int = 4
    s3: S3Config = dataclasses.field(default_factory=S3Config)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}: use one of {', '.join(MODEL_NAMES)}")
        if self.model == INTERNVIDEO2_1B and not self.checkpoint:
            raise ValueError(f"{INTERNVIDEO2_1B} needs a checkpoint (path, s3:// URI or hub id)")
        if not 1 <= self.num_frames <= 16:
            raise ValueError(f"num_frames must be in 1..16, got {self.num_frames}")

    def config(self) -> InternVideo2Config:
        if self.model == TINY_RANDOM:
            return InternVideo2Config.tiny_random(num_frames=self.num_frames)
        if self.model == DEMO_SHAPES:
            return InternVideo2Config.demo_shapes(num_frames=self.num_frames)
        return InternVideo2Config.stage2_1b(num_frames=self.num_frames)

    def weights(self) -> str | None:
        """The checkpoint to load: `checkpoint`, or the bundled one for `demo-shapes`."""
        if self.model == DEMO_SHAPES and not self.checkpoint:
            return str(DEMO_CHECKPOINT)
        return self.checkpoint

    def identity(self) -> str:
        """`name@digest`: what the `model` column records. Cheap: never downloads weights."""
        if self.model == TINY_RANDOM:
            return f"{TINY_RANDOM}@{self.config().random_digest(self.seed)}"
        from models.internvideo2.checkpoint import checkpoint_identity

        return f"{self.config().name}@{checkpoint_identity(self.weights(), s3=self.s3)}"

    def build(self, device: torch.device | str, dtype: torch.dtype) -> InternVideo2:
        """The frozen, eval-mode model on `device` in `dtype`."""
        from models.internvideo2 import load_internvideo2, random_internvideo2

        if self.model == TINY_RANDOM:
            return random_internvideo2(self.config(), seed=self.seed, device=device, dtype=dtype)
        return load_internvideo2(
            self.weights(), self.config(), device=device, dtype=dtype, s3=self.s3
        )

    def tokenizer(self, source: Any = None) -> Any:
        """The tokenizer of this model's text encoder (see :func:`tokenizer_for`)."""
        return tokenizer_for(self.model, source)

    @classmethod
    def for_identity(cls, identity: str, num_frames: int, **overrides: Any) -> ModelSpec | None:
        """The spec that produced rows whose `model` column is `identity`, when it needs no
        weights file (`tiny-random` with its seed, the bundled `demo-shapes`); None otherwise.
        """
        if identity.startswith(f"{DEMO_SHAPES}@"):
            spec = cls(model=DEMO_SHAPES, num_frames=num_frames, **overrides)
            return spec if spec.identity() == identity else None
        if not identity.startswith(f"{TINY_RANDOM}@"):
            return None
        seed = InternVideo2Config.seed_of_random_digest(identity.partition("@")[2])
        return cls(model=TINY_RANDOM, num_frames=num_frames, seed=seed or 0, **overrides)


def tokenizer_for(name: str, source: Any = None) -> Any:
    """The tokenizer for a model's text encoder: `source` (a tokenizer, a `vocab.txt` or its
    directory, a hub id), else the model's own: the fixed tiny vocabulary for `tiny-random`,
    the bundled `demo-shapes.vocab.txt` for `demo-shapes`, bert-large-uncased for any other
    (the 1B model).

    Args:
        name: a `--model` name or a model config's name.

    Raises:
        TokenizerError: the vocabulary cannot be found (offline without a copy).
    """
    import os

    from models.internvideo2.tokenizer import BERT_REPO, load_tokenizer, tiny_tokenizer

    if source is not None and not isinstance(source, str | os.PathLike):
        return source
    if source is not None:
        return load_tokenizer(source)
    if name == TINY_RANDOM:
        return tiny_tokenizer()
    if name == DEMO_SHAPES:
        return load_tokenizer(DEMO_VOCAB)
    return load_tokenizer(BERT_REPO)
