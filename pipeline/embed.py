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

from models.internvideo2 import (
    InternVideo2,
    InternVideo2Config,
    load_internvideo2,
    random_internvideo2,
)
from models.internvideo2.checkpoint import checkpoint_identity
from models.internvideo2.preprocess import normalize_frames

from . import schema

logger = logging.getLogger(__name__)

TINY_RANDOM = "tiny-random"
INTERNVIDEO2_1B = "internvideo2-1b"


@dataclass(frozen=True)
class ModelSpec:
    """Which weights to embed with. Production names a checkpoint; tests use `tiny-random`.

    Attributes:
        model: `internvideo2-1b` (needs `checkpoint`) or `tiny-random` (random weights,
            clearly labelled in every row's `model` column; never a silent fallback).
        checkpoint: local path, `s3://` URI or hub id (`repo@revision`) of the 1B weights.
        num_frames: frames per clip (T); the checkpoint's `pos_embed` is interpolated.
        s3_endpoint_url: endpoint for an `s3://` checkpoint.
        seed: weights seed of `tiny-random`.
    """

    model: str = INTERNVIDEO2_1B
    checkpoint: str | None = None
    num_frames: int = 4
    s3_endpoint_url: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in (INTERNVIDEO2_1B, TINY_RANDOM):
            raise ValueError(
                f"unknown model {self.model!r}: use {INTERNVIDEO2_1B} or {TINY_RANDOM}"
            )
        if self.model == INTERNVIDEO2_1B and not self.checkpoint:
            raise ValueError(f"{INTERNVIDEO2_1B} needs a checkpoint (path, s3:// URI or hub id)")
        if not 1 <= self.num_frames <= 16:
            raise ValueError(f"num_frames must be in 1..16, got {self.num_frames}")

    def config(self) -> InternVideo2Config:
        if self.model == TINY_RANDOM:
            return InternVideo2Config.tiny_random(num_frames=self.num_frames)
        return InternVideo2Config.stage2_1b(num_frames=self.num_frames)

    def identity(self) -> str:
        """`name@digest`: what the `model` column records. Cheap: never downloads weights."""
        if self.model == TINY_RANDOM:
            cfg = json.dumps(self.config().to_dict(), sort_keys=True).encode()
            return f"{TINY_RANDOM}@random:seed{self.seed}:{hashlib.sha256(cfg).hexdigest()[:12]}"
        ident = checkpoint_identity(self.checkpoint, s3_endpoint_url=self.s3_endpoint_url)
        return f"{self.config().name}@{ident}"

    def build(self, device: torch.device | str, dtype: torch.dtype) -> InternVideo2:
        if self.model == TINY_RANDOM:
            return random_internvideo2(self.config(), seed=self.seed, device=device, dtype=dtype)
        return load_internvideo2(
            self.checkpoint,
            self.config(),
            device=device,
            dtype=dtype,
            s3_endpoint_url=self.s3_endpoint_url,
        )


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

    Input columns: `frames` uint8 `[N, T, H, W, 3]`, `status`, plus anything else (passed
    through). Output: the same rows without `frames`, with `embedding` float32
    `[N, 512]` (zeros on failed rows), `model`, `signature`, `num_frames`, and
    `vision_tokens`/`vision_tokens_shape` when configured. A numpy batch (a dict) comes back
    as a dict; an Arrow table, as the pipeline passes it, as an Arrow table whose 2-D
    columns (`embedding`, `vision_tokens_shape`) are fixed-size lists.
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

    def __call__(self, batch: dict[str, np.ndarray] | pa.Table) -> dict[str, np.ndarray] | pa.Table:
        """Embed a batch. An Arrow table (what the pipeline passes) comes back as one: the
        columns this stage does not write keep their exact types and nulls (numpy would
        turn an int64 column with a null into float64, rounding values above 2**53)."""
        if isinstance(batch, pa.Table):
            from ray.data.block import BlockAccessor  # Arrow batches come from Ray Data

            frames = BlockAccessor.for_block(batch).to_numpy(schema.FRAMES)
            message = (
                batch[schema.MESSAGE].to_numpy(zero_copy_only=False)
                if schema.MESSAGE in batch.column_names
                else None
            )
            columns = self._embed(
                frames, batch[schema.STATUS].to_numpy(zero_copy_only=False), message
            )
            out = batch.drop_columns([schema.FRAMES])
            for name, values in columns.items():
                array = _arrow(values)
                if name in out.column_names:
                    out = out.set_column(out.column_names.index(name), name, array)
                else:
                    out = out.append_column(name, array)
            return out
        frames = batch.pop(schema.FRAMES)
        batch.update(self._embed(frames, batch[schema.STATUS], batch.get(schema.MESSAGE)))
        return batch

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
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
    if values.dtype == object:
        return pa.array(values.tolist())
    return pa.array(values)
