"""Stage-2 training objectives: video-text contrastive (VTC) and video-text matching (VTM).

Pure functions over tensors; the model and the optimizer live in :mod:`.train`.

Captions repeat across videos (the same attributes give the same words), so "the other
items of the batch" are not all negatives: a `positives` matrix says which (video, text)
pairs match. The contrastive targets spread over every positive (as in ALBEF and
InternVideo2 stage 2, where pairs sharing an id are positives), and hard negatives for the
matching head are drawn among the non-positives only.

Shapes: `B` pairs per batch (video `i` and text `i` always match), `D` embedding width,
`A` attributes per caption.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: A text label that names no value for an attribute (a caption that leaves it out).
ANY = -1


def positive_mask(video_labels: torch.Tensor, text_labels: torch.Tensor) -> torch.Tensor:
    """Which texts describe which videos.

    Args:
        video_labels: int `[Bv, A]` attribute values of each video.
        text_labels: int `[Bt, A]` attribute values each text names; :data:`ANY` where a
            text does not mention the attribute.

    Returns:
        bool `[Bv, Bt]`: True where text `j` is true of video `i` (every attribute it
        names equals the video's). Equal label rows (same caption) are positives.
    """
    if video_labels.ndim != 2 or text_labels.ndim != 2:
        raise ValueError("labels must be [B, A]")
    if video_labels.shape[1] != text_labels.shape[1]:
        raise ValueError(f"{video_labels.shape[1]} vs {text_labels.shape[1]} attributes")
    v, t = video_labels[:, None, :], text_labels[None, :, :]
    return ((v == t) | (t == ANY)).all(dim=-1)


def contrastive_loss(
    video_emb: torch.Tensor,
    text_emb: torch.Tensor,
    temp: torch.Tensor | float,
    positives: torch.Tensor,
) -> torch.Tensor:
    """Symmetric InfoNCE with a temperature and several positives per row.

    Each direction is a cross-entropy between the softmax over the batch and a target that
    spreads uniformly over that row's positives: `-sum_j target_ij * log_softmax(s_i)_j`
    with `s = video_emb @ text_emb.T / temp`, averaged over rows, then over the two
    directions (video→text, text→video).

    Args:
        video_emb: `[B, D]` L2-normalized video embeddings.
        text_emb: `[B, D]` L2-normalized text embeddings.
        temp: scalar temperature (the checkpoint's `temp`), > 0.
        positives: bool `[B, B]`, `[i, j]` True when text `j` matches video `i`;
            every row and column needs at least one True (the diagonal).

    Returns:
        The scalar loss.
    """
    if positives.shape != (video_emb.shape[0], text_emb.shape[0]):
        raise ValueError(f"positives {tuple(positives.shape)} do not match the batch")
    if not (positives.any(dim=1).all() and positives.any(dim=0).all()):
        raise ValueError("every video and every text needs a positive")
    sim_v2t = video_emb @ text_emb.T / temp  # [B, B]
    target = positives.to(sim_v2t.dtype)
    v2t = -(F.log_softmax(sim_v2t, dim=1) * (target / target.sum(1, keepdim=True))).sum(1)
    t2v = -(F.log_softmax(sim_v2t.T, dim=1) * (target.T / target.T.sum(1, keepdim=True))).sum(1)
    return (v2t.mean() + t2v.mean()) / 2


def sample_hard_negatives(
    sim: torch.Tensor,
    positives: torch.Tensor,
    generator: torch.Generator | None = None,
    uniform: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one negative per row, with probability `softmax(sim)` over the non-positives.

    Similar non-matching items are drawn more often (ALBEF's hard negatives). The softmax
    runs over the non-positives only, so a row keeps a proper distribution even when its
    positives dominate (with a low temperature the full softmax underflows to zero on
    every negative).

    Args:
        sim: `[Bq, Bk]` similarity logits (e.g. `video_emb @ text_emb.T / temp`), no grad.
        positives: bool `[Bq, Bk]`; True entries are never drawn.
        generator: random source, for reproducible draws.
        uniform: share of the probability spread evenly over the non-positives, `[0, 1]`.
            With a low temperature the hardest negative takes nearly all the mass; while
            the encoders cannot tell it apart yet, the matching head learns nothing from
            it, and a uniform share keeps the easier differences in its diet.

    Returns:
        int64 `[Bq]` column index of each row's negative, and bool `[Bq]` valid: False
        for a row whose every column is a positive (its index is meaningless).
    """
    if sim.shape != positives.shape:
        raise ValueError(f"sim {tuple(sim.shape)} vs positives {tuple(positives.shape)}")
    valid = ~positives.all(dim=1)
    logits = sim.detach().float().masked_fill(positives, float("-inf"))
    # Rows without negatives get a uniform dummy row (multinomial rejects all-zero rows).
    logits = torch.where(valid[:, None], logits, torch.zeros_like(logits))
    weights = torch.softmax(logits, dim=1)
    if uniform:
        allowed = (~positives | ~valid[:, None]).float()
        weights = (1 - uniform) * weights + uniform * allowed / allowed.sum(1, keepdim=True)
    index = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return index, valid


def matching_pairs(
    sim_v2t: torch.Tensor,
    positives: torch.Tensor,
    generator: torch.Generator | None = None,
    uniform: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs the matching head is trained on: each true pair plus two hard negatives.

    For every text a hard-negative video (drawn from its text→video similarities) and for
    every video a hard-negative text (from its video→text similarities), as in ALBEF and
    InternVideo2 stage 2; rows without any negative contribute no negative pair.

    Args:
        sim_v2t: `[B, B]` video→text similarity logits (no grad needed).
        positives: bool `[B, B]`, `[i, j]` True when text `j` matches video `i`.
        generator: random source for the draws.
        uniform: see :func:`sample_hard_negatives`.

    Returns:
        int64 `[M]` video indices, int64 `[M]` text indices and int64 `[M]` labels (1 =
        match, 0 = no match): first the `B` true pairs `(i, i)`, then the `B` or fewer
        (negative video, text) and (video, negative text) pairs, `B <= M <= 3B`.
    """
    b = sim_v2t.shape[0]
    if sim_v2t.shape != (b, b):
        raise ValueError(f"expected a square [B, B] similarity, got {tuple(sim_v2t.shape)}")
    own = torch.arange(b, device=sim_v2t.device)
    neg_video, video_ok = sample_hard_negatives(sim_v2t.T, positives.T, generator, uniform)
    neg_text, text_ok = sample_hard_negatives(sim_v2t, positives, generator, uniform)
    videos = torch.cat([own, neg_video[video_ok], own[text_ok]])
    texts = torch.cat([own, own[video_ok], neg_text[text_ok]])
    labels = torch.zeros_like(videos)
    labels[:b] = 1
    return videos, texts, labels


def matching_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the matching head.

    Args:
        logits: `[M, 2]` `itm_head` outputs (index 1 = "match").
        labels: int64 `[M]`, 1 for matching pairs and 0 otherwise.

    Returns:
        The scalar loss, the mean over the `M` pairs.
    """
    return F.cross_entropy(logits.float(), labels)
