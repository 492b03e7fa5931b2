"""The GPU stage: one callable class per actor holds the eval-mode encoder and embeds batches.

Decoded clips arrive as uint8 `[N, T, 224, 224, 3]`; they are moved to the device as uint8
and normalized there (a quarter of the bytes of float pixels on the host-to-device link).
Rows the decode stage marked as failed pass through untouched, so every manifest row
reaches the writer.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import torch

from models.internvideo2 import InternVideo2
from models.internvideo2.preprocess import normalize_frames

from . import schema
from .models import ModelSpec

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbedConfig:
    """How the embed actors run the model (resources and batch size live in `build.py`)."""

    model: ModelSpec = dataclasses.field(default_factory=ModelSpec)
    device: Literal["auto", "cuda", "cpu"] = "auto"
    #: `auto`: bfloat16 on CUDA, float32 on CPU.
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    #: `torch.compile` each vision block (GPU only; ~1 min of compile per actor start).
    compile: bool = False
    #: Also emit the vision tokens (bf16) for the re-ranking side table.
    store_vision_tokens: bool = False
    #: Extra signature inputs (frame count and clip settings), set by the job.
    signature_extra: tuple[tuple[str, str], ...] = ()

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device=cuda but no CUDA device is visible to this actor")
        return torch.device(self.device)

    def resolved_dtype(self, device: torch.device) -> torch.dtype:
        if self.dtype == "auto":
            return torch.bfloat16 if device.type == "cuda" else torch.float32
        return getattr(torch, self.dtype)


def signature(model_identity: str, extra: tuple[tuple[str, str], ...]) -> str:
    """Short hash of everything that changes an embedding: weights, frames, clip settings."""
    payload = json.dumps([model_identity, sorted(extra)], sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


@torch.inference_mode()
def encode_frames(model: InternVideo2, frames: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The pipeline's frame path: uint8 `[N, T, H, W, 3]` → normalized on the model's device →
    (float32 unit embeddings `[N, 512]` on the host, vision tokens `[N, 1 + L*T, C]` on device).
    """
    pixels = normalize_frames(torch.from_numpy(frames), model.dtype, model.device)
    tokens, pooled = model.video_features(pixels)
    return model.project_video(pooled).float().cpu().numpy(), tokens


class EmbedStage:
    """Ray Data callable class: builds the model once per actor, embeds each batch.

    Input: an Arrow table with `frames` (a uint8 `[T, H, W, 3]` tensor per row, see
    :func:`pipeline.schema.frames_array`), `status`, plus anything else (passed through).
    Output: the same rows without `frames`, with `embedding` (float32 `fixed_size_list[512]`,
    zeros on failed rows), `model`, `signature`, `num_frames`, and `vision_tokens` /
    `vision_tokens_shape` when configured.
    """

    def __init__(self, config: EmbedConfig, model_identity: str | None = None) -> None:
        self.config = config
        self.device = config.resolved_device()
        self.dtype = config.resolved_dtype(self.device)
        start = time.perf_counter()
        self.model = config.model.build(self.device, self.dtype)
        if config.compile and self.device.type == "cuda":
            self.model.compile_blocks()
        self.identity = model_identity or config.model.identity()
        self.signature = signature(self.identity, config.signature_extra)
        self.embed_seconds = 0.0
        logger.info(
            "embed actor ready: %s on %s/%s in %.1fs",
            self.identity,
            self.device,
            self.dtype,
            time.perf_counter() - start,
        )

    def embed_frames(self, frames: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
        return encode_frames(self.model, frames)

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Embed a batch. The columns this stage does not write keep their exact Arrow types
        and nulls (metadata passes through untouched)."""
        if not isinstance(batch, pa.Table):
            raise TypeError(f"EmbedStage takes Arrow tables, got {type(batch).__name__}")
        columns = self._embed(
            schema.frames_ndarray(batch[schema.FRAMES]),
            batch[schema.STATUS].to_numpy(zero_copy_only=False),
            batch[schema.MESSAGE].to_numpy(zero_copy_only=False)
            if schema.MESSAGE in batch.column_names
            else None,
        )
        out = batch.drop_columns([schema.FRAMES])
        for name, values in columns.items():
            array = _arrow(values)
            if name in out.column_names:
                out = out.set_column(out.column_names.index(name), name, array)
            else:
                out = out.append_column(name, array)
        return out

    def _embed(
        self, frames: np.ndarray, status: np.ndarray, message: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """The columns this stage writes for a batch: `status`/`message` (a model failure
        marks the rows, it never drops them), `embedding`, timings and provenance."""
        n = len(frames)
        ok = np.asarray(status) == schema.Status.OK.value
        emb = np.zeros((n, schema.EMBED_DIM), np.float32)
        tokens_out: list[bytes] = [b""] * n
        shapes = np.zeros((n, 2), np.int32)
        start = time.perf_counter()
        if ok.any():
            idx = np.flatnonzero(ok)
            try:
                emb[idx], tokens = self.embed_frames(np.ascontiguousarray(frames[idx]))
                if self.config.store_vision_tokens:
                    tok = tokens.to(torch.bfloat16).cpu()
                    for j, i in enumerate(idx):
                        tokens_out[i] = tok[j].view(torch.int16).numpy().tobytes()
                        shapes[i] = tok.shape[1:]
            except Exception as exc:  # a model failure marks the rows; it never drops them
                logger.exception("embedding %d clips failed", len(idx))
                status = np.array(status, dtype=object)
                status[idx] = schema.Status.EMBED_ERROR.value
                message = np.array([None] * n if message is None else message, dtype=object)
                message[idx] = f"{type(exc).__name__}: {exc}"[:500]
        elapsed = time.perf_counter() - start
        self.embed_seconds += elapsed
        columns = {
            schema.STATUS: status,
            **({} if message is None else {schema.MESSAGE: message}),
            schema.EMBEDDING: emb,
            schema.EMBED_SECONDS: np.full(n, elapsed / max(n, 1)),
            schema.MODEL: np.full(n, self.identity, dtype=object),
            schema.SIGNATURE: np.full(n, self.signature, dtype=object),
            schema.NUM_FRAMES: np.full(n, self.config.model.num_frames, np.int32),
        }
        if self.config.store_vision_tokens:
            columns[schema.VISION_TOKENS] = np.array(tokens_out, dtype=object)
            columns[schema.VISION_TOKENS_SHAPE] = shapes
        return columns


def _arrow(values: np.ndarray) -> pa.Array:
    """A column this stage writes, as Arrow: `[N, D]` numbers become fixed-size lists."""
    if values.ndim == 2:
        return schema.fixed_size_list(values)
    if values.dtype == object:
        return pa.array(values.tolist())
    return pa.array(values)
