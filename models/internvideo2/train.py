"""Stage-2 training of a small InternVideo2 on in-memory clips: contrastive plus matching loss.

Everything is in memory and on the CPU-or-GPU tensors given: uint8 frames, attribute labels
and a function that writes a caption for labels. Frames go through
:func:`.preprocess.normalize_frames` and captions through :func:`.tokenizer.tokenize`, the
same calls as inference and queries, so the model sees at training time what it sees when
embedding. One `torch.Generator` seeded from the config drives every random choice
(initialization, order, augmentation, hard negatives): the same seed and thread count give
the same weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .losses import ANY, contrastive_loss, matching_loss, matching_pairs, positive_mask
from .model import InternVideo2
from .preprocess import normalize_frames
from .tokenizer import DEFAULT_MAX_LENGTH, tokenize
from .vision import RMSNorm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FrameTransform:
    """A frame transform that keeps a caption true once its labels are mapped.

    Attributes:
        name: for logs.
        flip_time: play the frames backwards.
        flip_width: mirror every frame left-right.
        relabel: per attribute, the new label of each old label (`relabel[a][old]`), or
            None where the attribute does not change.
    """

    name: str
    flip_time: bool = False
    flip_width: bool = False
    relabel: tuple[tuple[int, ...] | None, ...] = ()

    def frames(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, T, H, W, 3]` → transformed `[B, T, H, W, 3]`."""
        dims = [d for d, on in ((1, self.flip_time), (3, self.flip_width)) if on]
        return frames.flip(dims) if dims else frames

    def labels(self, labels: torch.Tensor) -> torch.Tensor:
        """int `[B, A]` → the labels of the transformed clips."""
        out = labels.clone()
        for a, mapping in enumerate(self.relabel):
            if mapping is not None:
                out[:, a] = torch.tensor(mapping, device=labels.device)[labels[:, a]]
        return out


@dataclass(frozen=True)
class TrainConfig:
    """Optimization settings.

    Attributes:
        seed: drives initialization, batch order, augmentation and negative sampling.
        epochs, batch_size: passes over the data and clips per step (the last partial
            batch of an epoch is dropped).
        lr, min_lr, warmup_steps: AdamW peak learning rate, linear warm-up, then cosine
            decay to `min_lr` at the last step.
        weight_decay: on weight matrices only (not norms, biases, embeddings, `temp`).
        temp_init, temp_min, temp_max: the learnable contrastive temperature (the
            checkpoint's `temp`), clamped after each step.
        matching_weight: weight of the matching loss against the contrastive one.
        uniform_negatives: share of the matching head's negatives drawn uniformly rather
            than by similarity (see :func:`.losses.sample_hard_negatives`).
        transform_prob: probability of applying each caption-preserving transform.
        partner_fraction: share of each batch that are "partners": for an anchor clip of
            the batch, a clip whose caption differs from the anchor's in exactly one
            attribute. In a random batch most pairs differ in several attributes (nine
            in ten in the background colour alone), so the loss would teach little
            beyond the most visible one; partners make each attribute a frequent
            difference between a positive and a negative.
        partner_weights: per attribute, how often a partner differs in it (relative; empty:
            evenly among the attributes in which the anchor has a partner). A model that
            has learnt the colours spends few gradients on partners that differ in colour.
        reverse_partners: share of each batch (taken from the partner slots) that are an
            anchor's own clip played backwards, its direction relabelled by the data's
            time-reversing transform. Such a pair differs only in the order of its frames,
            so only the motion tells the two captions apart; with independent random
            reversals alone the model learned where a shape tends to be, not where it goes
            (a reversed clip kept its embedding, cosine 0.9999).
        caption_dropout: per attribute, the probability that a training caption leaves
            it out (a shorter query); empty: always the full caption.
        max_length: token length of captions (queries use the same).
        grad_clip: max global gradient norm.
        qk_norm_init: initial QK-norm weights of the vision blocks (see :func:`init_weights`).
        cross_attention_init: standard deviation of the initial query and key weights of
            the matching decoder's cross-attention (0: the LeCun rule of the other
            weights). At the LeCun scale the text queries' attention over the ~200 raw
            vision tokens starts peaked on a few tokens picked by position, not content,
            and stays there: the matching loss stayed near its prior (0.60 against 0.637)
            for 36 epochs, and fine-tuning only the decoder of that model did no better;
            re-initialized at 0.02 (attention near uniform, free to move to the shape's
            tokens) the same decoder fell to 0.41 in 300 steps.
        matching_epochs, matching_lr, matching_reinit: after the joint epochs, this many
            more passes that train the matching decoder alone (the fusion layers and
            `itm_head`; both towers frozen, so the embeddings do not change) at peak rate
            `matching_lr`, its weights first drawn afresh when `matching_reinit`. The
            decoder reads vision tokens that move under it while the towers train; on the
            finished towers it gains a little more (held-out re-ranked R@1 0.78 → 0.83 in
            four passes). A decoder stuck near its prior (as with the LeCun-scale
            cross-attention) needs `matching_reinit`: fresh, it learned in a few hundred
            steps.
        time_position_scale: factor on the frame-index channels of the initial vision
            position embeddings (:func:`position_table`). At 1 they were a sixteenth of the
            trained patch tokens' norm and the model never used frame order.
        motion_position_scale: factor on the space-time product channels of the initial
            vision position embeddings (:func:`position_table`), whose patch-embedding
            rows start at 0; 0: no such channels (the frame channels keep all their
            frequencies). Without them no recipe learnt frame order (a clip played
            backwards kept its embedding, cosine 0.9999); at 1, with the patch embedding
            writing those channels as the others, neither: the patch tokens grew to an
            RMS of 6 against the products' 0.5. At 8 with those rows at 0 the held-out
            direction choice was 0.98, and 0.01 with the frames played backwards.
        token_rms_max, token_rms_weight: the vision tokens' root-mean-square above
            `token_rms_max` costs `token_rms_weight` times its square. The contrastive path
            pools the tokens through LayerNorms and is blind to their scale, so without
            this the residual stream grows freely (RMS ~2 at initialization, ~24 after 8
            epochs); the matching decoder's cross-attention reads the raw tokens, and at
            that scale its softmax saturates and the matching loss stays at its prior (the
            entropy of one positive in three pairs, 0.6365). 0 turns it off.
    """

    seed: int = 0
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    min_lr: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.05
    temp_init: float = 0.07
    temp_min: float = 0.01
    temp_max: float = 0.5
    matching_weight: float = 1.0
    uniform_negatives: float = 0.5
    transform_prob: float = 0.5
    partner_fraction: float = 0.5
    partner_weights: tuple[float, ...] = ()
    reverse_partners: float = 0.0
    caption_dropout: tuple[float, ...] = ()
    max_length: int = DEFAULT_MAX_LENGTH
    grad_clip: float = 1.0
    qk_norm_init: float = 3.0
    cross_attention_init: float = 0.02
    matching_epochs: int = 0
    matching_lr: float = 1e-3
    matching_reinit: bool = False
    time_position_scale: float = 1.0
    motion_position_scale: float = 8.0
    token_rms_max: float = 2.0
    token_rms_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.matching_epochs < 0:
            raise ValueError("need epochs >= 1, batch_size >= 2 and matching_epochs >= 0")
        if self.lr <= 0 or self.matching_lr <= 0:
            raise ValueError("learning rates must be positive")
        if self.motion_position_scale < 0:
            raise ValueError("motion_position_scale must be >= 0")
        if not 0 < self.temp_min <= self.temp_init <= self.temp_max:
            raise ValueError("need 0 < temp_min <= temp_init <= temp_max")
        probabilities = (
            self.transform_prob,
            self.partner_fraction,
            self.reverse_partners,
            *self.caption_dropout,
        )
        if not all(0 <= p < 1 for p in probabilities):
            raise ValueError("probabilities must be in [0, 1)")
        if self.reverse_partners > self.partner_fraction:
            raise ValueError("reverse_partners take partner slots: need <= partner_fraction")


@dataclass
class TrainingSet:
    """Clips and what they show.

    Attributes:
        frames: uint8 `[N, T, 224, 224, 3]` decoded clips.
        labels: int64 `[N, A]` attribute labels; equal rows have the same caption.
        describe: labels (a tuple of `A` ints, :data:`.losses.ANY` for a left-out
            attribute) → caption text.
        transforms: caption-preserving frame transforms for augmentation.
    """

    frames: torch.Tensor
    labels: torch.Tensor
    describe: Callable[[tuple[int, ...]], str]
    transforms: Sequence[FrameTransform] = ()

    def __post_init__(self) -> None:
        if self.frames.dtype != torch.uint8 or self.frames.ndim != 5:
            raise ValueError("frames must be uint8 [N, T, H, W, 3]")
        if self.labels.ndim != 2 or self.labels.shape[0] != self.frames.shape[0]:
            raise ValueError("labels must be [N, A], one row per clip")


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch means and the learned temperature."""

    temp: torch.Tensor
    epochs: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


class CaptionTokens:
    """Token ids of captions by labels, tokenized once each with the query tokenizer."""

    def __init__(self, tokenizer, describe: Callable, max_length: int) -> None:
        self.tokenizer, self.describe, self.max_length = tokenizer, describe, max_length
        self.rows: dict[tuple[int, ...], int] = {}
        self.ids = torch.empty(0, max_length, dtype=torch.long)
        self.mask = torch.empty(0, max_length, dtype=torch.long)

    def __call__(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """int `[B, A]` labels → ids and attention mask `[B, max_length]`."""
        keys = [tuple(row) for row in labels.tolist()]
        new = list(dict.fromkeys(k for k in keys if k not in self.rows))
        if new:
            ids, mask = tokenize(self.tokenizer, [self.describe(k) for k in new], self.max_length)
            base = len(self.rows)
            self.rows.update((k, base + i) for i, k in enumerate(new))
            self.ids, self.mask = torch.cat([self.ids, ids]), torch.cat([self.mask, mask])
        index = torch.tensor([self.rows[k] for k in keys])
        return self.ids[index], self.mask[index]


class PartnerBatches:
    """Batches of anchors (each clip once per pass, in random order) and their partners.

    A partner of an anchor has the same labels but one, drawn uniformly among the
    attributes for which such a clip exists; an anchor without any gets a random clip.
    """

    def __init__(
        self,
        labels: torch.Tensor,
        batch_size: int,
        fraction: float,
        gen: torch.Generator,
        weights: Sequence[float] = (),
    ) -> None:
        self.n, self.gen = labels.shape[0], gen
        self.weights = tuple(weights) or (1.0,) * labels.shape[1]
        if len(self.weights) != labels.shape[1] or min(self.weights) < 0:
            raise ValueError("partner weights: one non-negative weight per attribute")
        # attributes[i]: the attribute in which each entry of partners[i] differs.
        self.attributes: list[list[int]] = [[] for _ in range(self.n)]
        self.num_partners = round(batch_size * fraction)
        self.num_anchors = batch_size - self.num_partners
        rows = [tuple(r) for r in labels.tolist()]
        # partners[i][a]: clips equal to clip i in every attribute but a, differing in a.
        self.partners: list[list[torch.Tensor]] = [[] for _ in rows]
        for a in range(labels.shape[1]):
            groups: dict[tuple, list[int]] = {}
            for i, r in enumerate(rows):
                groups.setdefault(r[:a] + r[a + 1 :], []).append(i)
            for i, r in enumerate(rows):
                same_rest = groups[r[:a] + r[a + 1 :]]
                options = [j for j in same_rest if rows[j][a] != r[a]]
                if options and self.weights[a] > 0:
                    self.partners[i].append(torch.tensor(options))
                    self.attributes[i].append(a)
        self.order = torch.empty(0, dtype=torch.long)

    def _pick(self, attributes: list[int], u: float) -> int:
        """Index into `attributes` drawn by the attributes' weights, `u` uniform in [0, 1)."""
        weights = [self.weights[a] for a in attributes]
        target, total = u * sum(weights), 0.0
        for k, w in enumerate(weights):
            total += w
            if target < total:
                return k
        return len(weights) - 1

    def _anchors(self, k: int) -> torch.Tensor:
        while self.order.numel() < k:
            self.order = torch.cat([self.order, torch.randperm(self.n, generator=self.gen)])
        out, self.order = self.order[:k], self.order[k:]
        return out

    def next(self) -> torch.Tensor:
        """int64 `[batch_size]` clip indices: anchors, then one partner per first anchors."""
        anchors = self._anchors(self.num_anchors)
        picks = torch.rand(self.num_partners, 2, generator=self.gen).tolist()
        partners = []
        for anchor, (u, v) in zip(anchors[: self.num_partners].tolist(), picks, strict=False):
            options = self.partners[anchor]
            if options:
                choice = options[self._pick(self.attributes[anchor], u)]
                partners.append(int(choice[int(v * len(choice))]))
            else:
                partners.append(int(v * self.n))
        return torch.cat([anchors, torch.tensor(partners, dtype=torch.long)])


def init_weights(
    model: InternVideo2,
    generator: torch.Generator,
    qk_norm_init: float,
    time_position_scale: float = 1.0,
    cross_attention_init: float = 0.0,
    motion_position_scale: float = 0.0,
) -> None:
    """Initialize a small model for training from scratch.

    Linear and convolution weights are N(0, 1/fan_in) (LeCun), so activations keep their
    scale through 32- to 64-wide layers (BERT's N(0, 0.02) would leave such narrow layers
    nearly linear), biases 0, norms and LayerScale 1. Embeddings, position embeddings and
    the cls token are N(0, 0.02), but the vision position embeddings start as
    :func:`position_table`, with `motion_position_scale` on its space-time product
    channels, which the patch embedding leaves at 0 (its rows for them start at 0, so the
    shape's colour does not blur them). The vision blocks' QK-norm weights start at
    `qk_norm_init`: QK-norm bounds the attention logits by the norm weights, and at 1 the
    attention over ~200 tokens stays nearly uniform, so a few shape tokens cannot stand out.
    The matching decoder's cross-attention has no QK-norm: its query and key weights start
    at N(0, `cross_attention_init`) when that is not 0, so its attention starts near uniform.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.weight", "k_norm.weight")):
                p.fill_(qk_norm_init)
            else:
                _init_parameter(model, name, p, generator, cross_attention_init)
        pad = model.config.text.pad_token_id
        model.text_encoder.bert.embeddings.word_embeddings.weight[pad].zero_()
        vision = model.config.vision
        grid = round(vision.patches_per_frame**0.5)
        encoder = model.vision_encoder
        table = position_table(
            vision.num_frames, grid, vision.embed_dim, time_position_scale, motion_position_scale
        )
        encoder.pos_embed.copy_(table)
        if motion_position_scale:
            motion = motion_channels(vision.embed_dim)
            encoder.patch_embed.proj.weight[motion] = 0
            encoder.patch_embed.proj.bias[motion] = 0
        encoder.img_pos_embed.copy_(position_table(1, grid, vision.embed_dim))


def position_table(
    frames: int, grid: int, dim: int, time_scale: float = 1.0, motion_scale: float = 0.0
) -> torch.Tensor:
    """Initial vision position embeddings `[1, 1 + frames * grid * grid, dim]`: sines and
    cosines of the frame index (a quarter of the channels) and of the patch row and column
    (the rest, split evenly), each over geometric frequencies from 1 down; the cls row is 0.

    With the N(0, 0.02) start of the other embeddings the positions were a hundredth of the
    patch tokens' scale and stayed too small to matter: the trained model gave the same
    embedding to a clip played backwards (cosine 1.0000), so it could not tell the
    direction of motion, only where the shape tends to be. Entries here are in [-1, 1],
    the frame channels times `time_scale`.

    Sums of a frame part and a patch part cannot tell a clip from itself played backwards
    once pooled: a shape visits the same patches either way, in the other order, and any
    linear readout of the visited tokens adds the same terms. So when `motion_scale` is not
    0 (and there are several frames), the frame channels' lowest frequencies, which barely
    change over a few frames, carry instead the patch column and row, each in [-1, 1],
    times the frame's place in the clip (-1 first, 1 last), times `motion_scale`
    (:func:`motion_channels`): summed over a shape's tokens these give the slope of its
    path, which flips sign when the clip is played backwards.
    """
    time_dim = _time_channels(dim)
    space_dim = (dim - time_dim) // 2
    t, y, x = torch.meshgrid(
        torch.arange(frames), torch.arange(grid), torch.arange(grid), indexing="ij"
    )
    parts = [_waves(t, time_dim) * time_scale, _waves(y, space_dim), _waves(x, space_dim)]
    table = torch.cat(parts, dim=1)
    if motion_scale and frames > 1:
        place = _centred(t, frames)
        column, row = _centred(x, grid), _centred(y, grid)
        channels = motion_channels(dim)
        pairs = [column * place, row * place] * (len(channels) // 2)
        table[:, channels] = torch.stack(pairs, 1) * motion_scale
    return torch.cat([torch.zeros(1, dim), table]).unsqueeze(0)


def motion_channels(dim: int) -> list[int]:
    """Channels of :func:`position_table` that carry space-time products: the sines and
    cosines of the frame channels' lower half of frequencies."""
    half = _time_channels(dim) // 2
    low = range(half // 2, half)
    return [*low, *(half + i for i in low)]


def _time_channels(dim: int) -> int:
    time_dim = max(2, dim // 4 // 2 * 2)
    return dim - 2 * ((dim - time_dim) // 4 * 2)


def _centred(index: torch.Tensor, size: int) -> torch.Tensor:
    """Flattened `index` in 0..size-1 mapped linearly onto [-1, 1]."""
    half = (size - 1) / 2
    return (index.flatten().float() - half) / half


def _waves(index: torch.Tensor, dim: int) -> torch.Tensor:
    """`[n, dim]`: sin then cos of `index * f` for `dim / 2` frequencies `f` from 1 down."""
    freq = 1e-4 ** (torch.arange(dim // 2, dtype=torch.float64) / max(1, dim // 2))
    angle = index.flatten().double()[:, None] * freq[None]
    return torch.cat([angle.sin(), angle.cos()], dim=1).float()


def _init_parameter(
    model: InternVideo2,
    name: str,
    p: torch.Tensor,
    generator: torch.Generator,
    cross_attention_init: float,
) -> None:
    """One parameter by the rules of :func:`init_weights` (QK-norm weights aside)."""
    module = model.get_submodule(name.rsplit(".", 1)[0])
    if cross_attention_init and _is_cross_query_or_key(name):
        p.normal_(0.0, cross_attention_init, generator=generator)
    elif name.endswith("gamma") or (_is_norm(module) and name.endswith("weight")):
        p.fill_(1.0)
    elif isinstance(module, nn.Linear | nn.Conv3d) and name.endswith("weight"):
        p.normal_(0.0, p[0].numel() ** -0.5, generator=generator)
    elif name.endswith("bias"):
        p.zero_()
    else:  # embeddings, position embeddings, cls token
        p.normal_(0.0, 0.02, generator=generator)


def _is_cross_query_or_key(name: str) -> bool:
    return ".crossattention.self." in name and name.endswith(("query.weight", "key.weight"))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm | RMSNorm)


def _param_groups(
    named: Iterable[tuple[str, nn.Parameter]], plain: list[nn.Parameter], weight_decay: float
) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on `plain`, norms, biases, embeddings."""
    decay, plain = [], list(plain)
    for name, p in named:
        embedding = "embed" in name.split(".")[-1] or "embeddings" in name or "cls_token" in name
        (decay if p.ndim >= 2 and not embedding else plain).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0}]


def lr_factor(step: int, total: int, warmup: int, floor: float) -> float:
    """Linear warm-up over `warmup` steps, then cosine from 1 down to `floor` at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def train(
    model: InternVideo2,
    tokenizer,
    data: TrainingSet,
    config: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> TrainResult:
    """Initialize `model` from `config.seed` and train it on `data` in place.

    Args:
        model: a freshly built model (its weights are overwritten), on its device.
        tokenizer: the WordPiece tokenizer queries will use.
        data: clips, labels and captions.
        config: optimization settings.
        on_epoch: called after every epoch with its index and statistics.

    Returns:
        The per-epoch statistics and the learned temperature (a 0-d tensor, stored in the
        checkpoint as `temp`). The model is left in eval mode.
    """
    # Deterministic kernels for the run: with two CPU threads the backward of the
    # matching pairs' gathers (index_put with accumulation) otherwise adds in a varying
    # order, and two runs of one seed drifted apart by 1e-5 within four steps.
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return _train(model, tokenizer, data, config, on_epoch)
    finally:
        torch.use_deterministic_algorithms(previous)


def _train(
    model: InternVideo2,
    tokenizer,
    data: TrainingSet,
    config: TrainConfig,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
) -> TrainResult:
    gen = torch.Generator().manual_seed(config.seed)
    init_weights(
        model,
        gen,
        config.qk_norm_init,
        config.time_position_scale,
        config.cross_attention_init,
        config.motion_position_scale,
    )
    model.requires_grad_(True)
    model.train()
    device = model.device
    temp = nn.Parameter(torch.tensor(config.temp_init, device=device))
    groups = _param_groups(model.named_parameters(), [temp], config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.lr)
    n = data.frames.shape[0]
    steps_per_epoch = n // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"{n} clips are fewer than one batch of {config.batch_size}")
    total = steps_per_epoch * config.epochs
    floor = config.min_lr / config.lr
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, config.warmup_steps, floor)
    )
    captions = CaptionTokens(tokenizer, data.describe, config.max_length)
    batches = PartnerBatches(
        data.labels, config.batch_size, config.partner_fraction, gen, config.partner_weights
    )
    reversed_slots = _reversed_slots(batches, config)
    reverse = time_reversal(data.transforms) if reversed_slots else None
    result = TrainResult(temp=temp.detach())
    started = time.perf_counter()
    for epoch in range(config.epochs):
        sums = {"loss": 0.0, "vtc": 0.0, "vtm": 0.0}
        epoch_start = time.perf_counter()
        for _ in range(steps_per_epoch):
            index = batches.next()
            frames, video_labels, text_labels = augment(data, index, config, gen)
            if reversed_slots:
                _reverse_partners(frames, video_labels, text_labels, reverse, reversed_slots)
            ids, mask = captions(text_labels)
            vtc, vtm, scale = _losses(
                model, temp, frames, ids, mask, video_labels, text_labels, gen, config
            )
            loss = vtc + config.matching_weight * vtm + config.token_rms_weight * scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_([*model.parameters(), temp], config.grad_clip)
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                temp.clamp_(config.temp_min, config.temp_max)
            sums["loss"] += loss.item()
            sums["vtc"] += vtc.item()
            sums["vtm"] += vtm.item()
        stats = {k: v / steps_per_epoch for k, v in sums.items()}
        stats["temp"] = temp.item()
        stats["lr"] = schedule.get_last_lr()[0]
        stats["seconds"] = time.perf_counter() - epoch_start
        result.epochs.append(stats)
        logger.info(
            "epoch %d/%d: loss %.4f (vtc %.4f, vtm %.4f), temp %.4f, %.1f s",
            epoch + 1,
            config.epochs,
            stats["loss"],
            stats["vtc"],
            stats["vtm"],
            stats["temp"],
            stats["seconds"],
        )
        if on_epoch is not None:
            on_epoch(epoch, stats)
    result.steps = total
    result.temp = temp.detach().clone()
    if config.matching_epochs:
        result.steps += _train_matching(
            model, result.temp, data, config, gen, captions, batches, on_epoch, result
        )
    result.seconds = time.perf_counter() - started
    model.eval()
    model.requires_grad_(False)
    return result


def matching_decoder_parameters(model: InternVideo2) -> list[tuple[str, nn.Parameter]]:
    """The matching decoder's parameters: the BERT layers from `fusion_layer` on (their
    self-attention, cross-attention and feed-forward parts) and `itm_head`."""
    first = model.config.text.fusion_layer
    prefixes = [
        f"text_encoder.bert.encoder.layer.{i}."
        for i in range(first, model.config.text.num_hidden_layers)
    ]
    return [
        (name, p)
        for name, p in model.named_parameters()
        if name.startswith(("itm_head.", *prefixes))
    ]


def _train_matching(
    model: InternVideo2,
    temp: torch.Tensor,
    data: TrainingSet,
    config: TrainConfig,
    gen: torch.Generator,
    captions: CaptionTokens,
    batches: PartnerBatches,
    on_epoch: Callable[[int, dict[str, float]], None] | None,
    result: TrainResult,
) -> int:
    """The matching-decoder phase of :class:`TrainConfig` (`matching_epochs`); its steps.

    The same batches, augmentation and hard negatives as the joint epochs; the towers run
    without gradients, so a step costs a forward pass and the decoder's backward.
    """
    named = matching_decoder_parameters(model)
    model.requires_grad_(False)
    with torch.no_grad():
        for name, p in named:
            p.requires_grad_(True)
            if config.matching_reinit:
                _init_parameter(model, name, p, gen, config.cross_attention_init)
    params = [p for _, p in named]
    groups = _param_groups(named, [], config.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=config.matching_lr)
    n = data.frames.shape[0]
    steps_per_epoch = n // config.batch_size
    total = steps_per_epoch * config.matching_epochs
    floor = config.min_lr / config.matching_lr
    warmup = min(config.warmup_steps, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, warmup, floor)
    )
    device = model.device
    model.train()
    for epoch in range(config.matching_epochs):
        epoch_start, vtm_sum = time.perf_counter(), 0.0
        for _ in range(steps_per_epoch):
            frames, video_labels, text_labels = augment(data, batches.next(), config, gen)
            ids, mask = captions(text_labels)
            with torch.no_grad():
                pixels = normalize_frames(frames, model.dtype, device)
                tokens, pooled = model.video_features(pixels)
                text_emb, hidden = model.encode_text(ids, mask)
                sim = (model.project_video(pooled) @ text_emb.T / temp).cpu()
            positives = positive_mask(video_labels, text_labels)
            vtm = _matching_term(model, sim, positives, hidden, mask, tokens, gen, config)
            optimizer.zero_grad(set_to_none=True)
            vtm.backward()
            nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            schedule.step()
            vtm_sum += vtm.item()
        stats = {
            "phase": "matching",
            "vtm": vtm_sum / steps_per_epoch,
            "lr": schedule.get_last_lr()[0],
            "seconds": time.perf_counter() - epoch_start,
        }
        result.epochs.append(stats)
        logger.info(
            "matching epoch %d/%d: vtm %.4f, %.1f s",
            epoch + 1,
            config.matching_epochs,
            stats["vtm"],
            stats["seconds"],
        )
        if on_epoch is not None:
            on_epoch(config.epochs + epoch, stats)
    return total


def checkpoint_state(model: InternVideo2, temp: torch.Tensor) -> dict[str, dict]:
    """`{"model": state_dict}` in the official layout: the model's keys plus the scalar `temp`.

    Tensors are detached float32 CPU copies, ready for `torch.save`.
    """
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    state["temp"] = temp.detach().to("cpu", torch.float32).reshape(())
    return {"model": state}


def augment(
    data: TrainingSet, index: torch.Tensor, config: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch `index` with random caption-preserving transforms and caption dropout.

    Returns:
        uint8 frames `[B, T, H, W, 3]`, video labels `[B, A]` and text labels `[B, A]`
        (video labels with some attributes set to :data:`.losses.ANY`).
    """
    frames, labels = data.frames[index], data.labels[index]
    b = index.shape[0]
    for transform in data.transforms:
        chosen = torch.rand(b, generator=gen) < config.transform_prob
        if chosen.any():
            frames[chosen] = transform.frames(frames[chosen])
            labels[chosen] = transform.labels(labels[chosen])
    text_labels = labels.clone()
    for a, p in enumerate(config.caption_dropout):
        dropped = torch.rand(b, generator=gen) < p
        text_labels[dropped, a] = ANY
    return frames, labels, text_labels


def _reversed_slots(batches: PartnerBatches, config: TrainConfig) -> list[tuple[int, int]]:
    """(slot, anchor slot) pairs: the last partner slots, each with the anchor it partners."""
    k = min(round(config.batch_size * config.reverse_partners), batches.num_partners)
    first = batches.num_partners - k
    return [(batches.num_anchors + j, j) for j in range(first, batches.num_partners)]


def time_reversal(transforms: Sequence[FrameTransform]) -> FrameTransform:
    """The one of `transforms` that plays the frames backwards (and nothing else)."""
    for transform in transforms:
        if transform.flip_time and not transform.flip_width:
            return transform
    raise ValueError("no transform plays the frames backwards (and nothing else)")


def _reverse_partners(
    frames: torch.Tensor,
    video_labels: torch.Tensor,
    text_labels: torch.Tensor,
    reverse: FrameTransform,
    slots: list[tuple[int, int]],
) -> None:
    """In place: each slot becomes its anchor's (augmented) clip played backwards."""
    dst = torch.tensor([s for s, _ in slots])
    src = torch.tensor([a for _, a in slots])
    frames[dst] = reverse.frames(frames[src])
    labels = reverse.labels(video_labels[src])
    video_labels[dst] = labels
    left_out = text_labels[src] == ANY
    text_labels[dst] = torch.where(left_out, torch.full_like(labels, ANY), labels)


def _losses(
    model: InternVideo2,
    temp: torch.Tensor,
    frames: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    video_labels: torch.Tensor,
    text_labels: torch.Tensor,
    gen: torch.Generator,
    config: TrainConfig,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The contrastive and the matching loss of one batch, and the token-scale penalty."""
    device = model.device
    pixels = normalize_frames(frames, model.dtype, device)
    tokens, pooled = model.video_features(pixels)
    video_emb = model.project_video(pooled)
    text_emb, hidden = model.encode_text(ids, mask)
    positives = positive_mask(video_labels, text_labels).to(device)
    vtc = contrastive_loss(video_emb, text_emb, temp, positives)
    with torch.no_grad():
        sim = (video_emb @ text_emb.T / temp).cpu()
    vtm = _matching_term(model, sim, positives.cpu(), hidden, mask, tokens, gen, config)
    rms = tokens.float().pow(2).mean(dim=-1).sqrt()
    scale = (rms - config.token_rms_max).clamp(min=0).pow(2).mean()
    return vtc, vtm, scale


def _matching_term(
    model: InternVideo2,
    sim: torch.Tensor,
    positives: torch.Tensor,
    hidden: torch.Tensor,
    mask: torch.Tensor,
    tokens: torch.Tensor,
    gen: torch.Generator,
    config: TrainConfig,
) -> torch.Tensor:
    """The matching loss of a batch: each true pair plus hard negatives drawn from the CPU
    similarity logits `sim` (no gradient), scored by the decoder on `tokens`."""
    videos, texts, labels = matching_pairs(sim, positives, gen, config.uniform_negatives)
    mask = mask.to(model.device)
    logits = model.match_logits(hidden[texts], mask[texts], tokens[videos])
    return matching_loss(logits, labels.to(model.device))
