"""The Ray Data graph: manifest → decode actors (CPU) → embed actors (GPU) → driver.

This is the only module that decides resources: CPUs and GPUs per actor, actor pool sizes
and batch sizes. Stages themselves are plain callable classes that know nothing of Ray.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa
import ray

from .compat import actor_retry_args

if TYPE_CHECKING:
    from .decode import DecodeConfig
    from .embed import EmbedConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourceConfig:
    """How much of the cluster each stage takes.

    The actor pools are elastic: they start at their size and run on anything from one
    actor to their maximum, so a run keeps going on fewer actors when a node is lost (its
    actors come back when capacity returns) and grows when an autoscaler adds nodes.

    Attributes:
        decode_actors: decode actors to start with; `None` sizes it to the cluster's CPUs
            minus what the embed actors reserve (at least 1).
        max_decode_actors: most decode actors the pool grows to as nodes join (`None`: its
            starting size, for a cluster of fixed size).
        decoders_per_actor: isolated decoder processes per decode actor, each fed by a
            thread; several per actor save Ray's per-actor start-up (~1.2 CPU s) and
            memory. `None`: 1 when `decode_actors` is given (it then counts decode cores),
            else the largest of 4, 3, 2, 1 that divides the free decoder slots, so no CPU
            is left unreserved (2 CPUs: one actor with 2 decoders; 15: 5 x 3; 17: 17 x 1).
        decode_cpus: CPUs reserved per decoder process (an actor reserves
            `decode_cpus * decoders_per_actor`).
        decode_batch_videos: manifest rows per decode call; small keeps actors busy evenly.
        embed_actors: embed actors to start with (usually the number of GPUs).
        max_embed_actors: most embed actors as GPU nodes join (`None`: `embed_actors`).
        embed_gpus: GPUs per embed actor (0 runs the encoder on CPU: tests, demo).
        embed_cpus: CPUs reserved per embed actor.
        embed_batch_clips: clips per encoder call (128 saturates an H100/H200 at T=4).
        max_task_retries: restarts of an actor that died (a lost node, a killed worker
            process) and retries of its calls; -1 (default): as long as the run makes
            progress (Ray Data's no-progress timeout bounds a run that cannot). A bad video
            cannot kill an actor this way: it is decoded in an isolated child process, whose
            crash is one error row.
        actor_start_s: when the actor pools ask for more CPUs or GPUs than the cluster
            has at the start, how long they may wait for an autoscaler to add them before
            the run fails (Ray Data waits forever by default: a request the cluster can
            never place, such as more GPUs than it has, would hang the nightly job).
    """

    decode_actors: int | None = None
    max_decode_actors: int | None = None
    decoders_per_actor: int | None = 1
    decode_cpus: float = 1.0
    decode_batch_videos: int = 4
    embed_actors: int = 1
    max_embed_actors: int | None = None
    embed_gpus: float = 0.0
    embed_cpus: float = 1.0
    embed_batch_clips: int = 32
    max_task_retries: int = -1
    actor_start_s: float = 1800.0

    def __post_init__(self) -> None:
        if self.decode_actors is not None and self.decode_actors < 1:
            raise ValueError("decode_actors must be >= 1")
        if self.decoders_per_actor is not None and self.decoders_per_actor < 1:
            raise ValueError("decoders_per_actor must be >= 1 or None")
        if self.embed_actors < 1 or self.embed_batch_clips < 1 or self.decode_batch_videos < 1:
            raise ValueError("actor counts and batch sizes must be >= 1")
        if self.embed_gpus < 0 or self.decode_cpus <= 0 or self.embed_cpus < 0:
            raise ValueError("resource amounts must be non-negative (decode_cpus > 0)")
        if self.max_task_retries < -1 or self.actor_start_s <= 0:
            raise ValueError("max_task_retries must be >= -1 and actor_start_s > 0")
        for name in ("max_decode_actors", "max_embed_actors"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 or None")
        if self.max_embed_actors is not None and self.max_embed_actors < self.embed_actors:
            raise ValueError("max_embed_actors must be >= embed_actors")

    def resolved_decode_layout(self) -> tuple[int, int]:
        """`(decode actors, decoder processes per actor)` for the connected cluster."""
        if self.decode_actors is not None:
            return self.decode_actors, self.decoders_per_actor or 1
        cpus = ray.cluster_resources().get("CPU", os.cpu_count() or 1)
        slots = max(1, int((cpus - self.embed_actors * self.embed_cpus) // self.decode_cpus))
        per_actor = self.decoders_per_actor or next(
            k for k in (MAX_AUTO_DECODERS_PER_ACTOR, 3, 2, 1) if slots % k == 0
        )
        return max(1, slots // per_actor), per_actor


#: Auto layout's cap on decoder processes per actor: the actor's own per-video work (pipe
#: reads, row assembly: ~1 ms/video under the GIL) stays far below 4 decoders' output.
MAX_AUTO_DECODERS_PER_ACTOR = 4

#: Most blocks of rows to decode: each costs a Ray Data task, a small object and ~2 ms of
#: the driver's time (`ray.put` and its metadata), so 1024 are ~2 s of planning, and 1024
#: decode tasks keep a few hundred decoders busy (4096 made a 10M-row plan 10 s slower);
#: past it, blocks grow by whole decode batches.
MAX_BLOCKS = 1024


def rows_per_block(num_rows: int, batch: int, max_blocks: int = MAX_BLOCKS) -> int:
    """Rows per block of rows to decode: one decode batch, or the smallest whole multiple
    of it that keeps `num_rows` within `max_blocks` blocks.

    A map task takes one whole block, so rows in one block would be decoded by one actor
    in one task; blocks of one decode batch spread the work over every decode actor and
    let the embed stage start as soon as the first batch is decoded.
    """
    return batch * max(1, math.ceil(num_rows / (batch * max_blocks)))


def _manifest_blocks(table: pa.Table, batch: int) -> ray.data.Dataset:
    """An in-memory manifest table (tests, small runs) as a dataset of decode-batch blocks."""
    rows = rows_per_block(table.num_rows, batch)
    blocks = [table.slice(i, rows) for i in range(0, table.num_rows, rows)]
    # from_blocks computes block metadata here; from_arrow runs a remote task per block.
    return ray.data.from_blocks(blocks or [table])


def _larger_than_cluster(resources: ResourceConfig, decoders: int) -> bool:
    """Whether the actor pools ask for more than the cluster has now (said in the log): an
    autoscaler may add the nodes; otherwise the run fails after `actor_start_s`."""
    cluster = ray.cluster_resources()
    want = {
        "CPU": decoders * resources.decode_cpus + resources.embed_actors * resources.embed_cpus,
        "GPU": resources.embed_actors * resources.embed_gpus,
    }
    short = {k: (v, cluster.get(k, 0.0)) for k, v in want.items() if v > cluster.get(k, 0.0)}
    if short:
        logger.warning(
            "the actor pools ask for %s, the cluster has %s now: waiting up to %.0f s for "
            "an autoscaler to add them (see ResourceConfig)",
            ", ".join(f"{v:g} {k}" for k, (v, _) in short.items()),
            ", ".join(f"{have:g} {k}" for k, (_, have) in short.items()),
            resources.actor_start_s,
        )
    return bool(short)


def _pool(initial: int, most: int) -> ray.data.ActorPoolStrategy:
    """An elastic actor pool: starts with `initial` actors, runs on 1..`most`."""
    return ray.data.ActorPoolStrategy(min_size=1, max_size=most, initial_size=initial)


def build_dataset(
    source: ray.data.Dataset | pa.Table,
    decode: DecodeConfig,
    embed: EmbedConfig,
    resources: ResourceConfig,
    *,
    model_identity: str,
) -> ray.data.Dataset:
    """Wire decode and embed onto `source` (manifest rows: video_id, uri, ... metadata).

    The result streams one row per clip (status ok) or per failed video, without frames.
    """
    # The refresh plan already puts rows in the object store in blocks (rows_per_block);
    # an in-memory table is split here.
    ds = (
        source
        if isinstance(source, ray.data.Dataset)
        else _manifest_blocks(source, resources.decode_batch_videos)
    )
    n_decode, per_actor = resources.resolved_decode_layout()
    if _larger_than_cluster(resources, n_decode * per_actor):
        # A request the cluster cannot place now fails after this long instead of hanging
        # (the wait also makes the pools start one after the other, so only then). Set on
        # the source's context, which every dataset derived from it copies.
        ds.context.wait_for_min_actors_s = math.ceil(resources.actor_start_s)
    max_decode = max(n_decode, resources.max_decode_actors or n_decode)
    max_embed = resources.max_embed_actors or resources.embed_actors
    logger.info(
        "graph: %d (1..%d) decode actors x %d decoders x %.1f CPU, %d (1..%d) embed actors x "
        "%.2f GPU, batch %d clips",
        n_decode,
        max_decode,
        per_actor,
        resources.decode_cpus,
        resources.embed_actors,
        max_embed,
        resources.embed_gpus,
        resources.embed_batch_clips,
    )
    from .decode import DecodeStage  # the stages load torch, decoders: only when wired
    from .embed import EmbedStage

    # Actors lost with a node come back as capacity allows; their calls are retried
    # (pipeline.compat, entry 7).
    retry = actor_retry_args(resources.max_task_retries)
    ds = ds.map_batches(
        DecodeStage,
        fn_constructor_kwargs={"config": decode, "decoders": per_actor},
        batch_size=resources.decode_batch_videos,
        batch_format="pyarrow",
        compute=_pool(n_decode, max_decode),
        num_cpus=resources.decode_cpus * per_actor,
        **retry,
    )
    embed_kwargs = {"num_gpus": resources.embed_gpus} if resources.embed_gpus else {}
    return ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={"config": embed, "model_identity": model_identity},
        batch_size=resources.embed_batch_clips,
        batch_format="pyarrow",  # metadata columns pass through with their types and nulls
        compute=_pool(resources.embed_actors, max_embed),
        num_cpus=resources.embed_cpus,
        zero_copy_batch=True,  # the stage reads the frames and builds a new table
        **embed_kwargs,
        **retry,
    )
