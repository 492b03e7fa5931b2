"""Re-ranking of cosine candidates with InternVideo2's video-text matching head.

The official evaluation takes the top candidates by cosine similarity and orders them by
the match logit alone: the query's text-only hidden states cross-attend to each clip's full
vision tokens `[1 + N, C]` through the fusion layers, and `itm_head` index 1 is the score.
The text is encoded once; the clips' tokens come from one of two sources:

* **stored** — the `<table>_vision_tokens` side table (bf16 bytes written by the pipeline
  with `--store-vision-tokens`), read with one `clip_id IN (...)` query: no decode and no
  vision encoder, 2.75 MiB per clip at the 1B shapes.
* **recompute** — re-decode each candidate's window with the pipeline's decode settings
  (the decoder picks the same frames from a clip's recorded bounds; `frame_indices` are
  checked against the stored ones) and run the vision encoder again.

`auto` uses stored tokens when the side table holds every candidate under the candidate's
own signature, and recomputes otherwise (never a mix, so all scores of one query come from
the same precision). A candidate without tokens keeps its cosine order after the scored
ones, with a null `rerank_score` and a warning: results are never dropped silently.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
from lancedb.expr import col

from . import schema
from .decode import DecodeConfig, DecoderPool, IsolatedDecoder
from .schema import Status

if TYPE_CHECKING:  # torch is imported where tensors are made: a plain search never needs it
    import torch

    from models.internvideo2 import InternVideo2

logger = logging.getLogger(__name__)

RERANK_SCORE = "rerank_score"
TokenSource = Literal["auto", "stored", "recompute"]
TOKEN_SOURCES: tuple[str, ...] = TokenSource.__args__
#: Columns a candidate row must carry for either token source.
CANDIDATE_COLUMNS = (
    schema.CLIP_ID,
    schema.URI,
    schema.CLIP_START_S,
    schema.CLIP_END_S,
    schema.SIGNATURE,
    schema.FRAME_INDICES,
    schema.EMBEDDING,
)

#: uint8 frames `[N, T, H, W, 3]` → (embeddings `[N, 512]`, vision tokens `[N, 1 + M, C]`).
EmbedFrames = Callable[[np.ndarray], tuple[np.ndarray, "torch.Tensor"]]


@dataclass(frozen=True)
class RerankConfig:
    """How candidates are re-ranked.

    Attributes:
        tokens: `auto`, `stored` (side table only; candidates it lacks stay unscored) or
            `recompute` (always re-decode and re-encode).
        clips_per_call: clips per vision-encoder and matching-decoder call.
        min_embedding_cosine: a recomputed clip whose embedding has a lower cosine to the
            stored one is reported (the video changed, or the decode settings differ).
        decoders: isolated decoder processes re-decoding candidates in parallel
            (recompute); started on first use and kept for the next query.
    """

    tokens: TokenSource = "auto"
    clips_per_call: int = 16
    min_embedding_cosine: float = 0.99
    decoders: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))

    def __post_init__(self) -> None:
        if self.tokens not in TOKEN_SOURCES:
            raise ValueError(f"tokens must be one of {TOKEN_SOURCES}, got {self.tokens!r}")
        if self.clips_per_call < 1:
            raise ValueError("clips_per_call must be >= 1")
        if self.decoders < 1:
            raise ValueError("decoders must be >= 1")


def decode_tokens(raw: bytes, shape: Sequence[int]) -> torch.Tensor:
    """Raw bf16 bytes of the side table → bfloat16 tensor `shape` (`[1 + N, C]`)."""
    import torch

    flat = np.frombuffer(raw, dtype=np.int16)
    if flat.size != int(np.prod(shape)):
        raise ValueError(f"{len(raw)} bytes do not hold bf16 {tuple(shape)}")
    return torch.from_numpy(flat.reshape(tuple(shape)).copy()).view(torch.bfloat16)


def read_stored_tokens(
    tokens_table, candidates: pa.Table
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Stored tokens of the candidates, in one filtered query.

    Returns:
        bf16 tokens by clip_id for side-table rows whose signature equals the candidate's,
        and the clip_ids that have none (absent, or stored under another signature).
    """
    ids = candidates[schema.CLIP_ID].to_pylist()
    wanted = dict(zip(ids, candidates[schema.SIGNATURE].to_pylist(), strict=True))
    rows = (
        tokens_table.search()
        .where(col(schema.CLIP_ID).isin(ids))
        .select(
            [schema.CLIP_ID, schema.SIGNATURE, schema.VISION_TOKENS, schema.VISION_TOKENS_SHAPE]
        )
        .limit(None)
        .to_arrow()
    )
    found: dict[str, torch.Tensor] = {}
    for cid, sig, raw, shape in zip(*(rows[c].to_pylist() for c in rows.column_names), strict=True):
        if wanted.get(cid) == sig:
            found[cid] = decode_tokens(raw, shape)
    return found, [cid for cid in ids if cid not in found]


def match_scores(
    model: InternVideo2,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    tokens: Sequence[torch.Tensor],
    clips_per_call: int = 16,
) -> np.ndarray:
    """Match logits (index 1) of one text against each clip's tokens.

    Args:
        hidden: `[1, L, H]` text-only hidden states of the query (from `encode_text`).
        mask: `[1, L]` its padding mask.
        tokens: per clip `[1 + N, C]` vision tokens (any float dtype, any device).
        clips_per_call: clips per matching-decoder call.

    Returns:
        float32 `[len(tokens)]` match logits.
    """
    import torch

    out = np.empty(len(tokens), np.float32)
    with torch.inference_mode():
        for lo in range(0, len(tokens), clips_per_call):
            chunk = torch.stack(
                [t.to(model.device, model.dtype) for t in tokens[lo : lo + clips_per_call]]
            )
            n = len(chunk)
            logits = model.match_logits(hidden.expand(n, -1, -1), mask.expand(n, -1), chunk)
            out[lo : lo + n] = logits[:, 1].float().cpu().numpy()
    return out


def order_by_match(candidates: pa.Table, scores: Mapping[str, float], k: int) -> pa.Table:
    """Candidates (in cosine order) ordered by match score, unscored ones last; top k.

    Adds `rerank_score` (float32, null where a clip has no score).
    """
    ids = candidates[schema.CLIP_ID].to_pylist()
    # A non-finite logit is no score: sorting on it would scramble the order of the rest.
    values = [v if v is not None and math.isfinite(v) else None for v in map(scores.get, ids)]
    scored = sorted((i for i, v in enumerate(values) if v is not None), key=lambda i: -values[i])
    unscored = [i for i, v in enumerate(values) if v is None]
    order = (scored + unscored)[:k]
    column = pa.array([values[i] for i in order], pa.float32())
    return candidates.take(order).append_column(RERANK_SCORE, column)


class Reranker:
    """Re-ranks candidate rows for one query text with stored or recomputed vision tokens.

    Owns an :class:`IsolatedDecoder` (started on the first recompute); call :meth:`close`.

    Args:
        model: the model whose matching head scores the pairs.
        embed_frames: the pipeline's frame encoder (`EmbedStage.embed_frames`).
        decode: the decode settings the table was embedded with (frame count, size, clip
            windows), and where its URIs may be read from.
        expected_signature: the signature a row embedded with this model and these decode
            settings carries; other rows are not recomputed (their frames or model would
            differ). None skips the check.
        config: token source and batch sizes.
    """

    def __init__(
        self,
        model: InternVideo2,
        embed_frames: EmbedFrames,
        decode: DecodeConfig,
        expected_signature: str | None = None,
        config: RerankConfig | None = None,
    ) -> None:
        self.model = model
        self.embed_frames = embed_frames
        self.decode = decode
        self.expected_signature = expected_signature
        self.config = config or RerankConfig()
        self._decoders = DecoderPool(decode, self.config.decoders)
        self._decode_seconds = 0.0
        #: What the last call did: `source`, `scored`, `unscored` clips and wall seconds
        #: (`seconds` in all, `tokens_seconds` to get the tokens, of which `decode_seconds`
        #: re-decoding, and `match_seconds` in the matching decoder).
        self.last_stats: dict[str, object] = {}

    def close(self) -> None:
        """Stop the decoder processes (they restart on the next recompute)."""
        self._decoders.close()

    def rerank(
        self,
        candidates: pa.Table,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        k: int,
        tokens_table=None,
        source: TokenSource | None = None,
    ) -> pa.Table:
        """Order `candidates` (cosine order, with :data:`CANDIDATE_COLUMNS`) by match logit.

        Args:
            candidates: the rows to re-rank, best cosine first.
            hidden: `[1, L, H]` query hidden states; mask: `[1, L]`.
            k: rows to return.
            tokens_table: the open `<table>_vision_tokens` table, or None when there is none.
            source: overrides `config.tokens` for this call.

        Returns:
            The top k rows with `rerank_score`, best first.
        """
        # RerankConfig is the one place that validates a token source.
        source = (dataclasses.replace(self.config, tokens=source) if source else self.config).tokens
        start = time.perf_counter()
        tokens: dict[str, torch.Tensor] = {}
        if source in ("auto", "stored") and tokens_table is not None and len(candidates):
            tokens, missing = read_stored_tokens(tokens_table, candidates)
            if source == "auto" and missing:
                logger.info(
                    "%d of %d candidates lack stored tokens: recomputing all",
                    len(missing),
                    len(candidates),
                )
                tokens = {}
            elif tokens:
                source = "stored"
        elif source == "stored":
            logger.warning("no vision-token side table: candidates stay in cosine order")
        if source != "stored":
            source = "recompute"
            tokens = self.recompute_tokens(candidates)
        tokens_done = time.perf_counter()
        ids = [cid for cid in candidates[schema.CLIP_ID].to_pylist() if cid in tokens]
        logits = match_scores(
            self.model, hidden, mask, [tokens[cid] for cid in ids], self.config.clips_per_call
        )
        unscored = len(candidates) - len(ids)
        if unscored:
            logger.warning(
                "%d of %d candidates have no %s vision tokens; they keep their cosine order "
                "after the re-ranked ones, with a null rerank_score",
                unscored,
                len(candidates),
                source,
            )
        done = time.perf_counter()
        self.last_stats = {
            "source": source,
            "seconds": done - start,
            "tokens_seconds": tokens_done - start,
            "match_seconds": done - tokens_done,
            "decode_seconds": self._decode_seconds if source == "recompute" else 0.0,
            "scored": len(ids),
            "unscored": unscored,
        }
        return order_by_match(candidates, dict(zip(ids, logits.tolist(), strict=True)), k)

    def recompute_tokens(self, candidates: pa.Table) -> dict[str, torch.Tensor]:
        """Re-decode each candidate's clip and run the vision encoder on it.

        Clips that cannot be reproduced are left out (and logged): the decode fails, the
        row's signature is not `expected_signature`, or the frames picked differ from the
        row's `frame_indices`.
        """
        started = time.perf_counter()
        rows = []
        for row in candidates.select(list(CANDIDATE_COLUMNS)).to_pylist():
            if self.expected_signature and row[schema.SIGNATURE] != self.expected_signature:
                logger.warning(
                    "clip %s was embedded under signature %s, this searcher's model and decode "
                    "settings give %s: not recomputed",
                    row[schema.CLIP_ID],
                    row[schema.SIGNATURE],
                    self.expected_signature,
                )
                continue
            rows.append(row)
        # The candidates' decodes are independent: spread them over the decoder processes.
        decoded = self._decoders.map(self._decode_clip, rows)
        ids, frames, stored = [], [], []
        for row, clip in zip(rows, decoded, strict=True):
            if clip is not None:
                ids.append(row[schema.CLIP_ID])
                frames.append(clip)
                stored.append(row[schema.EMBEDDING])
        self._decode_seconds = time.perf_counter() - started
        out: dict[str, torch.Tensor] = {}
        step = self.config.clips_per_call
        for lo in range(0, len(ids), step):
            emb, tokens = self.embed_frames(np.stack(frames[lo : lo + step]))
            cosine = np.einsum("nd,nd->n", emb, np.asarray(stored[lo : lo + step], np.float32))
            for j, cid in enumerate(ids[lo : lo + step]):
                if cosine[j] < self.config.min_embedding_cosine:
                    logger.warning(
                        "clip %s: recomputed embedding has cosine %.4f to the stored one; "
                        "the video or the decode settings changed since it was embedded",
                        cid,
                        cosine[j],
                    )
                out[cid] = tokens[j]
        return out

    def _decode_clip(self, decoder: IsolatedDecoder, row: dict) -> np.ndarray | None:
        """uint8 frames `[T, H, W, 3]` of one candidate, or None when they differ or fail."""
        cid, start, end = row[schema.CLIP_ID], row[schema.CLIP_START_S], row[schema.CLIP_END_S]
        result = decoder.decode(row[schema.URI], start_s=start, end_s=end)
        if result.status is not Status.OK:
            logger.warning(
                "clip %s: re-decode of %s failed: %s: %s",
                cid,
                result.uri,
                result.status.value,
                result.message,
            )
            return None
        clip = next((c for c in result.clips if abs(c.start_s - (start or 0.0)) < 1e-6), None)
        expected = row[schema.FRAME_INDICES]
        if clip is None or (expected is not None and clip.frame_indices.tolist() != expected):
            got = None if clip is None else clip.frame_indices.tolist()
            logger.warning(
                "clip %s: re-decode picked frames %s, the table has %s", cid, got, expected
            )
            return None
        return clip.frames
