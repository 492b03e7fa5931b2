"""Retrieval metrics of a model on labelled clips: text→video, re-ranked, and copy detection.

Every distinct caption of the set is a query. A retrieved clip is correct when it shows
all attributes of the caption (another clip with the same caption counts, as the caption
cannot tell them apart). Clips are embedded along the pipeline's own path (uint8 frames →
:func:`.preprocess.normalize_frames` → vision encoder → projection) and queries along the
query path (:func:`.tokenizer.tokenize` → text encoder → projection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .model import InternVideo2
from .preprocess import normalize_frames
from .tokenizer import DEFAULT_MAX_LENGTH, tokenize


@torch.inference_mode()
def encode_clips(
    model: InternVideo2, frames: np.ndarray, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 `[N, T, H, W, 3]` → unit embeddings `[N, 512]` and vision tokens `[N, 1+M, C]`."""
    embeddings, tokens = [], []
    for start in range(0, len(frames), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(frames[start : start + batch_size]))
        pixels = normalize_frames(batch, model.dtype, model.device)
        toks, pooled = model.video_features(pixels)
        embeddings.append(model.project_video(pooled).float())
        tokens.append(toks)
    return torch.cat(embeddings), torch.cat(tokens)


@torch.inference_mode()
def match_scores(
    model: InternVideo2,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    tokens: torch.Tensor,
    batch_size: int = 256,
) -> torch.Tensor:
    """Match logits (index 1) of one text against clips.

    Args:
        hidden: `[1, L, H]` text hidden states; mask `[1, L]`.
        tokens: `[K, 1+M, C]` the clips' vision tokens.

    Returns:
        float `[K]`.
    """
    scores = []
    for start in range(0, tokens.shape[0], batch_size):
        toks = tokens[start : start + batch_size]
        k = toks.shape[0]
        logits = model.match_logits(hidden.expand(k, -1, -1), mask.expand(k, -1), toks)
        scores.append(logits[:, 1].float())
    return torch.cat(scores)


def _recall(hits: torch.Tensor, k: int) -> float:
    """Fraction of queries (rows of bool `[Q, K]`) with a hit among the first `k`."""
    return float(hits[:, :k].any(dim=1).float().mean())


@torch.inference_mode()
def evaluate(
    model: InternVideo2,
    tokenizer,
    frames: np.ndarray,
    labels: np.ndarray,
    captions: Sequence[str],
    copies: np.ndarray | None = None,
    *,
    attributes: Sequence[str] | None = None,
    rerank_k: int = 16,
    max_length: int = DEFAULT_MAX_LENGTH,
) -> dict[str, Any]:
    """Held-out retrieval metrics.

    Args:
        model: eval-mode model.
        tokenizer: the query tokenizer.
        frames: uint8 `[N, T, 224, 224, 3]` decoded clips (the catalog).
        labels: int `[N, A]` attribute labels; equal rows have the same caption.
        captions: the `N` captions.
        copies: uint8 `[N, T, 224, 224, 3]` a re-encoded copy of each clip, used as
            video queries against the catalog; or None.
        attributes: names of the `A` attributes (for the per-attribute accuracy).
        rerank_k: candidates re-ordered by the match logit.

    Returns:
        JSON-ready metrics: `text_to_video` (`r1`, `r5`, `chance_r1`, per-attribute
        top-1 accuracy), the same under `reranked`, `copy_top1` (with copies), and the
        set's sizes.
    """
    labels_t = torch.as_tensor(labels)
    n, a = labels_t.shape
    names = list(attributes or [f"attr{i}" for i in range(a)])
    video_emb, tokens = encode_clips(model, frames)
    distinct = {}
    for i, row in enumerate(labels_t.tolist()):
        distinct.setdefault(tuple(row), i)
    queries = torch.tensor(list(distinct), dtype=labels_t.dtype)  # [Q, A]
    texts = [captions[i] for i in distinct.values()]
    ids, mask = tokenize(tokenizer, texts, max_length)
    text_emb, hidden = model.encode_text(ids, mask)
    sim = text_emb.float() @ video_emb.T  # [Q, N]
    order = sim.argsort(dim=1, descending=True, stable=True)
    k = min(rerank_k, n)
    reranked = order.clone()
    for q in range(len(texts)):
        top = order[q, :k]
        scores = match_scores(model, hidden[q : q + 1], mask[q : q + 1], tokens[top])
        reranked[q, :k] = top[scores.argsort(descending=True, stable=True)]
    same = labels_t[None, :, :] == queries[:, None, :]  # [Q, N, A]
    matches = same.all(dim=-1)
    chance = float(matches.float().mean(dim=1).mean())
    out: dict[str, Any] = {"num_videos": n, "num_captions": len(texts), "rerank_k": k}
    for key, ranking in (("text_to_video", order), ("reranked", reranked)):
        hits = matches.gather(1, ranking)
        top1 = same[torch.arange(len(texts)), ranking[:, 0]]  # [Q, A]
        out[key] = {
            "r1": _recall(hits, 1),
            "r5": _recall(hits, 5),
            "attribute_top1": {
                name: float(top1[:, i].float().mean()) for i, name in enumerate(names)
            },
        }
    out["text_to_video"]["chance_r1"] = chance
    if copies is not None:
        copy_emb, _ = encode_clips(model, copies)
        nearest = (copy_emb @ video_emb.T).argmax(dim=1)
        out["copy_top1"] = float((nearest == torch.arange(n)).float().mean())
    return out
