"""What decoding one video gives: clips, or a failure with its status."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ..schema import Status


class Clip(NamedTuple):
    """One decoded clip: frames uint8 `[T, size, size, 3]`, frame_indices int32 `[T]`, and a
    JPEG of its middle sampled frame at the video's aspect ratio (None when off)."""

    index: int
    start_s: float
    end_s: float
    frames: np.ndarray
    frame_indices: np.ndarray
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class DecodeResult:
    """Outcome of one video: clips when `status` is OK, else a redacted message.

    `decoder` and `content_version` are None where they are unknown (a fetch that failed
    before any decoder ran, an object whose version could not be read).
    """

    status: Status
    uri: str
    message: str = ""
    clips: tuple[Clip, ...] = ()
    decoder: str | None = None
    content_version: str | None = None
    attempts: int = 1


class Failure(Exception):
    """A video cannot be decoded (raised inside the parent, turned into a DecodeResult)."""

    def __init__(
        self, status: Status, message: str, retryable: bool = True, decoder: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.retryable = status, message, retryable
        self.decoder: str | None = decoder
        self.content_version: str | None = None
