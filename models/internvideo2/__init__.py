"""InternVideo2 stage-2 (video encoder, BERT text encoder, matching decoder) in plain PyTorch.

Names are imported on first use: the configuration (:mod:`.config`) and the tokenizer
(:mod:`.tokenizer`) do not need torch, so a caller that only reads a config does not pay
for importing it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "IGNORED_KEYS": ".checkpoint",
    "IGNORED_PREFIXES": ".checkpoint",
    "CheckpointError": ".checkpoint",
    "load_internvideo2": ".checkpoint",
    "random_internvideo2": ".checkpoint",
    "InternVideo2Config": ".config",
    "TextConfig": ".config",
    "VisionConfig": ".config",
    "InternVideo2": ".model",
}
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

if TYPE_CHECKING:
    from .checkpoint import (
        IGNORED_KEYS,
        IGNORED_PREFIXES,
        CheckpointError,
        load_internvideo2,
        random_internvideo2,
    )
    from .config import InternVideo2Config, TextConfig, VisionConfig
    from .model import InternVideo2


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
