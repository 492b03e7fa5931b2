"""Fetch + decode: manifest rows → uint8 `[T, 224, 224, 3]` frames per clip.

Untrusted media is parsed only in long-lived child processes under a memory cap; a hang,
segfault or allocation bomb in FFmpeg costs one error row and a respawn, never the worker.

Modules, one concern each:

* :mod:`.config` — :class:`DecodeConfig`, the settings;
* :mod:`.fetch` — local files and S3 downloads, size limit, content versions;
* :mod:`.protocol` — the pipe messages and constants shared with the child;
* :mod:`.process` — :class:`IsolatedDecoder` (one child) and :class:`DecoderPool`;
* :mod:`.child` — the child process itself (probe, frame sampling, decord/PyAV);
* :mod:`.stage` — :class:`DecodeStage`, the Ray Data stage.

Names are imported on first use, so the child, which imports :mod:`.protocol`, does not
load the parent's modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DecodeConfig": ".config",
    "Clip": ".result",
    "DecodeResult": ".result",
    "Failure": ".result",
    "Fetcher": ".fetch",
    "content_version_of": ".fetch",
    "local_version": ".fetch",
    "DECODERS": ".protocol",
    "FAULT_MODES": ".protocol",
    "MIN_CLIP_STRIDE_S": ".protocol",
    "IsolatedDecoder": ".process",
    "DecoderPool": ".process",
    "DecodeStage": ".stage",
    "OUTPUT_BATCH_BYTES": ".stage",
}
__all__ = [
    "DECODERS",
    "FAULT_MODES",
    "MIN_CLIP_STRIDE_S",
    "OUTPUT_BATCH_BYTES",
    "Clip",
    "DecodeConfig",
    "DecodeResult",
    "DecodeStage",
    "DecoderPool",
    "Failure",
    "Fetcher",
    "IsolatedDecoder",
    "content_version_of",
    "local_version",
]

if TYPE_CHECKING:
    from .config import DecodeConfig
    from .fetch import Fetcher, content_version_of, local_version
    from .process import DecoderPool, IsolatedDecoder
    from .protocol import DECODERS, FAULT_MODES, MIN_CLIP_STRIDE_S
    from .result import Clip, DecodeResult, Failure
    from .stage import OUTPUT_BATCH_BYTES, DecodeStage


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
