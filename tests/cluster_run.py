"""One embedding run on a two-node Ray cluster on loopback, losing or gaining a node mid-run.

    python tests/cluster_run.py lose MANIFEST DB     # a worker node is killed mid-run
    python tests/cluster_run.py gain MANIFEST DB     # a worker node joins mid-run

Run by tests/test_node_loss.py in a process of its own (a `ray.cluster_utils.Cluster` head
and a second raylet on this machine, so the test session's own Ray stays apart). Prints
one JSON line: the run's outcome, and which decode actors ran on which node.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def _decode_actors() -> list[tuple[str, str]]:
    """`(actor id, node id)` of the live decode actors."""
    import ray

    return [
        (actor_id, info["Address"]["NodeID"])
        for actor_id, info in ray._private.state.actors().items()
        if info["State"] == "ALIVE" and "DecodeStage" in info["ActorClassName"]
    ]


def main(mode: str, manifest: str, db: str) -> dict:
    import ray
    from ray.cluster_utils import Cluster

    from pipeline.build import ResourceConfig
    from pipeline.decode import DecodeConfig
    from pipeline.embed import EmbedConfig
    from pipeline.models import ModelSpec
    from pipeline.runner import RunConfig, run

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    worker = cluster.add_node(num_cpus=2) if mode == "lose" else None
    ray.init(address=cluster.address, log_to_driver=False)
    cfg = RunConfig(
        manifest=manifest,
        db=db,
        decode=DecodeConfig(),
        embed=EmbedConfig(model=ModelSpec(model="tiny-random"), device="cpu"),
        # One decoder per actor, so actors spread over nodes; the pool may grow to 3.
        resources=ResourceConfig(
            decoders_per_actor=1,
            max_decode_actors=3,
            embed_cpus=0.0,
            decode_batch_videos=2,
            embed_batch_clips=8,
        ),
        chunk_rows=8,
        maintenance=None,
    )
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["counts"] = run(cfg).counts.to_dict()
        except Exception as exc:  # reported, not raised: the test reads the outcome
            outcome["error"] = f"{type(exc).__name__}: {exc}"[:2000]

    thread = threading.Thread(target=target)
    thread.start()
    seen: set[tuple[str, str]] = set()  # (actor, node): a restarted actor moves
    most = 0
    event_at = None
    deadline = time.monotonic() + 300
    while thread.is_alive() and time.monotonic() < deadline:
        actors = _decode_actors()
        seen.update(actors)
        most = max(most, len(actors))
        if event_at is None and mode == "lose" and worker is not None:
            if any(node == worker.node_id for _, node in actors):
                time.sleep(1.0)  # let it take work
                cluster.remove_node(worker, allow_graceful=False)  # raylet and workers: SIGKILL
                event_at = time.monotonic()
        elif event_at is None and mode == "gain" and actors:
            worker = cluster.add_node(num_cpus=2)
            event_at = time.monotonic()
        time.sleep(0.1)
    thread.join(timeout=max(1.0, deadline - time.monotonic()))
    return {
        **outcome,
        "finished": not thread.is_alive(),
        "event": event_at is not None,
        "worker_node": worker.node_id if worker is not None else None,
        "decode_actors_by_node": {
            node: sum(1 for _, n in seen if n == node) for node in {n for _, n in seen}
        },
        "most_decode_actors_at_once": most,
    }


if __name__ == "__main__":
    result = main(*sys.argv[1:4])
    print(json.dumps(result), flush=True)
    os._exit(0)  # the cluster's processes are killed with this process group by the test
