"""Retrieval quality of a model, measured end to end on a held-out sample catalog.

A catalog is rendered with a seed and an encoding (size, frame rate, length) that no
training catalog of `demo-shapes` used, together with a re-encoded copy of every video (another
resolution and bitrate, PyAV). The real job (`jobs/embed_catalog.py`, a subprocess with its
own local Ray) embeds the catalog into LanceDB and :class:`~pipeline.query.CatalogSearch`
answers the queries:

* **text→video**: every distinct caption of the catalog is a query; R@1 counts a top result
  that has all four attributes of the caption (shape, colour, direction, background), R@5
  one among the top five, and per attribute the share of top results with that attribute
  right; with and without re-ranking by the matching head.
* **video→video**: each re-encoded copy is the query (`CatalogSearch.video`, decoded and
  embedded by the pipeline's own path); a hit is the original as the top result.
* **caption choice**: per attribute, the share of videos whose own caption scores higher
  than every caption that differs from it in that attribute alone. R@1 on a small catalog
  hardly needs an attribute that no other video with the same three others disagrees on
  (a catalog of 48 of the 1,080 captions rarely has two videos that differ only in their
  direction); this asks the model about each attribute of every video, so a model that
  cannot tell left from right, or frames fed in the wrong order, show here.

:func:`decode_catalog`, :func:`embed_in_process` and :func:`vector_metrics` score
embeddings made in this process by the embed stage's frame path
(:func:`pipeline.embed.encode_frames`), so a test can break the preprocessing on purpose
(monkeypatching it) and see the metric fall.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from models.internvideo2.train import time_reversal

from . import schema
from .sample_catalog import CAPTION, make_sample_catalog, sample_videos
from .training_data import (
    ATTRIBUTES,
    TRANSFORMS,
    VALUES,
    CatalogSpec,
    describe,
    labels_of,
    reencode,
)

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
#: How the copies for the video→video metric are re-encoded (vs. the catalog's own CRF 23).
COPY_ENCODING = {"width": 224, "height": 168, "crf": 36}


@dataclass
class HeldOutCatalog:
    """A rendered catalog, what each video shows, and the paths of its re-encoded copies."""

    spec: CatalogSpec
    manifest: str
    labels: dict[str, tuple[int, ...]]
    captions: dict[str, str]
    uris: dict[str, str]
    copies: dict[str, str] = field(default_factory=dict)

    def queries(self) -> list[tuple[str, tuple[int, ...]]]:
        """Every distinct caption with its attribute labels, sorted."""
        by_caption = {self.captions[v]: self.labels[v] for v in self.labels}
        return sorted(by_caption.items())


def make_held_out(
    out: str | os.PathLike,
    spec: CatalogSpec,
    copies: Mapping[str, int] | None = COPY_ENCODING,
    workers: int | None = None,
) -> HeldOutCatalog:
    """Render `spec` under `out/catalog` and, unless `copies` is None, a re-encoded copy of
    every video under `out/copies` (:func:`pipeline.training_data.reencode`)."""
    out = Path(out)
    manifest = make_sample_catalog(
        str(out / "catalog"),
        num_videos=spec.num_videos,
        seconds=spec.seconds,
        width=spec.width,
        height=spec.height,
        fps=spec.fps,
        seed=spec.seed,
        workers=workers,
        absolute_uris=True,
    )
    rows = pq.read_table(manifest, columns=["video_id", "uri", CAPTION]).to_pylist()
    videos = {v.video_id: v for v in sample_videos(spec.num_videos, spec.seed)}
    catalog = HeldOutCatalog(
        spec,
        manifest,
        labels={r["video_id"]: labels_of(videos[r["video_id"]]) for r in rows},
        captions={r["video_id"]: r[CAPTION] for r in rows},
        uris={r["video_id"]: r["uri"] for r in rows},
    )
    if copies is not None:
        (out / "copies").mkdir(parents=True, exist_ok=True)
        for video_id, uri in catalog.uris.items():
            path = str(out / "copies" / f"{video_id}.mp4")
            reencode(uri, path, **copies)
            catalog.copies[video_id] = path
    return catalog


def run_embed_job(
    manifest: str, db: str, model: str, extra: Sequence[str] = (), timeout: float = 900
) -> float:
    """Embed `manifest` into `db` with `jobs/embed_catalog.py` (a subprocess); its seconds.

    The vision tokens are stored (`--store-vision-tokens`), so re-ranking reads them
    instead of decoding every candidate again.

    Raises:
        RuntimeError: the job failed (its stderr's tail in the message).
    """
    cmd = [sys.executable, str(ROOT / "jobs" / "embed_catalog.py"), "--manifest", manifest]
    cmd += ["--db", db, "--model", model, "--max-error-rate", "0", "--store-vision-tokens"]
    cmd += list(extra)
    # This checkout's packages first, whatever the environment has installed.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "RAY_USAGE_STATS_ENABLED": "0"}
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"embed job exited {done.returncode}: {done.stderr[-3000:]}")
    return time.perf_counter() - started


def _score(
    ranked: Sequence[Sequence[str]],
    queries: Sequence[tuple[str, tuple[int, ...]]],
    labels: Mapping[str, tuple[int, ...]],
) -> dict[str, Any]:
    """R@1, R@5 and per-attribute top-1 accuracy of ranked video ids, one list per query."""
    r1, r5 = [], []
    attribute = {name: [] for name in ATTRIBUTES}
    for ids, (_, want) in zip(ranked, queries, strict=True):
        got = [labels[v] for v in ids]
        r1.append(bool(got) and got[0] == want)
        r5.append(want in got[:5])
        for a, name in enumerate(ATTRIBUTES):
            attribute[name].append(bool(got) and got[0][a] == want[a])
    return {
        "queries": len(queries),
        "r1": float(np.mean(r1)),
        "r5": float(np.mean(r5)),
        "attribute_top1": {name: float(np.mean(v)) for name, v in attribute.items()},
    }


def text_metrics(
    search: Any, catalog: HeldOutCatalog, *, rerank: bool = False, rerank_k: int = 32
) -> dict[str, Any]:
    """Text→video metrics of every distinct caption through `search.text`."""
    queries = catalog.queries()
    ranked = []
    for caption, _ in queries:
        rows = search.text(caption, k=5, rerank=rerank, rerank_k=rerank_k)
        ranked.append(rows.column("video_id").to_pylist())
    return _score(ranked, queries, catalog.labels)


def copy_top1(search: Any, catalog: HeldOutCatalog) -> float:
    """Share of re-encoded copies whose top `search.video` result is their original."""
    if not catalog.copies:
        raise ValueError("the catalog was made without copies")
    hits = [
        search.video(path, k=1).column("video_id").to_pylist()[:1] == [video_id]
        for video_id, path in sorted(catalog.copies.items())
    ]
    return float(np.mean(hits))


def table_vectors(search: Any) -> dict[str, np.ndarray]:
    """The embedding of each video in `search`'s table (one clip per video), by video id."""
    table = search.table.to_arrow().select([schema.VIDEO_ID, schema.EMBEDDING])
    vectors = table.column(schema.EMBEDDING).combine_chunks().flatten().to_numpy()
    ids = table.column(schema.VIDEO_ID).to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError("caption choice needs one clip per video")
    return dict(zip(ids, vectors.reshape(len(ids), -1), strict=True))


def caption_choice(
    search: Any, catalog: HeldOutCatalog, videos: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """Per attribute, the share of videos whose own caption beats every caption that differs
    from it in that attribute alone (cosine of `search.embed_text` against `videos`, the
    embeddings by video id). A caption naming the background's colour for the shape, or
    the reverse, is never a candidate: the catalog has no such video."""
    cache: dict[str, np.ndarray] = {}

    def text(caption: str) -> np.ndarray:
        if caption not in cache:
            cache[caption] = search.embed_text(caption)
        return cache[caption]

    color, background = ATTRIBUTES.index("color"), ATTRIBUTES.index("background")
    right = {name: [] for name in ATTRIBUTES}
    for video_id, vector in sorted(videos.items()):
        own = catalog.labels[video_id]
        for a, name in enumerate(ATTRIBUTES):
            options = []
            for value in range(len(VALUES[a])):
                labels = (*own[:a], value, *own[a + 1 :])
                if labels[color] != labels[background]:
                    options.append((value, float(vector @ text(describe(labels)))))
            best = max(options, key=lambda o: o[1])[0]
            right[name].append(best == own[a])
    return {name: float(np.mean(v)) for name, v in right.items()}


def played_backwards(catalog: HeldOutCatalog) -> HeldOutCatalog:
    """The catalog as its clips played backwards show it: each video's direction reversed
    (left↔right, up↔down: the training data's "reverse" transform), its caption to match.
    Scoring reversed clips against it asks whether a model sees the video of the opposite
    direction, and still the same shape and colours."""
    reverse = time_reversal(TRANSFORMS)
    ids = list(catalog.labels)
    before = torch.tensor([catalog.labels[v] for v in ids], dtype=torch.long)
    flipped = reverse.labels(before.reshape(len(ids), len(ATTRIBUTES))).tolist()
    labels = {video_id: tuple(own) for video_id, own in zip(ids, flipped, strict=True)}
    captions = {video_id: describe(own) for video_id, own in labels.items()}
    return replace(catalog, labels=labels, captions=captions)


def measure(search: Any, catalog: HeldOutCatalog, rerank_k: int = 32) -> dict[str, Any]:
    """Every metric of the module docstring for one embedded catalog."""
    started = time.perf_counter()
    result = {
        "catalog": {
            "seed": catalog.spec.seed,
            "videos": len(catalog.labels),
            "size": f"{catalog.spec.width}x{catalog.spec.height}",
            "fps": catalog.spec.fps,
            "seconds": catalog.spec.seconds,
        },
        "text_to_video": text_metrics(search, catalog),
        "reranked": {
            "rerank_k": rerank_k,
            **text_metrics(search, catalog, rerank=True, rerank_k=rerank_k),
        },
    }
    result["caption_choice"] = caption_choice(search, catalog, table_vectors(search))
    if catalog.copies:
        result["copies"] = {"encoding": COPY_ENCODING, "top1": copy_top1(search, catalog)}
    result["query_seconds"] = round(time.perf_counter() - started, 1)
    return result


def decode_catalog(catalog: HeldOutCatalog, decode: Any = None) -> dict[str, np.ndarray]:
    """Each video's frames as the embed stage gets them (the decoder child's own function,
    default decode settings): uint8 `[T, 224, 224, 3]` by video id."""
    from .decode import DecodeConfig
    from .decode.child import decode_path

    params = (decode or DecodeConfig(thumbnail_size=0)).worker_params()
    frames = {}
    for video_id in sorted(catalog.uris):
        header, clips = decode_path(catalog.uris[video_id], params)
        if header["status"] != "ok" or clips.shape[0] != 1:
            raise RuntimeError(f"cannot decode {video_id} as one clip: {header.get('message')}")
        frames[video_id] = clips[0]
    return frames


def embed_in_process(model: Any, frames: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Embeddings of decoded clips by the embed stage's frame path
    (:func:`pipeline.embed.encode_frames`), looked up at call time so that a test's
    monkeypatch of the preprocessing applies."""
    from . import embed

    ids = sorted(frames)
    vectors, _ = embed.encode_frames(model, np.stack([frames[v] for v in ids]))
    return dict(zip(ids, vectors, strict=True))


def vector_metrics(
    search: Any, catalog: HeldOutCatalog, videos: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Text→video metrics by exact cosine between `search.embed_text` of every caption and
    the given video embeddings (what the table's flat search computes)."""
    queries = catalog.queries()
    ids = sorted(videos)
    matrix = np.stack([videos[v] for v in ids])
    ranked = []
    for caption, _ in queries:
        order = np.argsort(-(matrix @ search.embed_text(caption)), kind="stable")[:5]
        ranked.append([ids[i] for i in order])
    return _score(ranked, queries, catalog.labels)
