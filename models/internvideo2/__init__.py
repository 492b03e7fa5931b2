"""InternVideo2 stage-2 (video encoder, BERT text encoder, matching decoder) in plain PyTorch."""

from .checkpoint import (
    IGNORED_KEYS,
    IGNORED_PREFIXES,
    CheckpointError,
    load_internvideo2,
    random_internvideo2,
)
from .config import InternVideo2Config, TextConfig, VisionConfig
from .model import InternVideo2

__all__ = [
    "IGNORED_KEYS",
    "IGNORED_PREFIXES",
    "CheckpointError",
    "InternVideo2",
    "InternVideo2Config",
    "TextConfig",
    "VisionConfig",
    "load_internvideo2",
    "random_internvideo2",
]
