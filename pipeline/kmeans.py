"""Spherical k-means and nearest-centroid assignment for unit vectors, on CPU or GPU (torch).

Used by near-duplicate detection (:mod:`pipeline.dedup`) to cut the catalog into clusters
whose pairs are compared exactly. Cosine is the metric, so centroids are re-normalized
after every update (spherical k-means) and "nearest" means the highest dot product.

Why our own ~100 lines of torch rather than a library (`benchmarks/dedup.py
--compare-faiss`, numbers in `benchmarks/README.md`, "Near-duplicates"):

* every step is a matmul of unit vectors followed by a top-k, which torch runs at the
  machine's BLAS speed on CPU and on a GPU where one exists, with no new dependency;
* faiss-cpu 1.15 trained the same 1,000 centroids on the same 64k-row sample 1.16-1.34x
  faster (27.8 vs 32.2 s and 9.9 vs 13.3 s in two runs, 10 iterations, 2 busy shared
  cores) to the same fit (mean cosine to the nearest centroid 0.6079 vs 0.6077); training
  is a small part of a 1M-row pass, which the pair comparisons dominate, so the
  dependency would save a few seconds of minutes;
* LanceDB's IVF centroids exist only once a vector index is built (2,000 rows) and are
  sized for search (4k rows per partition with the default IVF_SQ, 245 partitions at 1M
  rows; 16k and 61 with IVF_HNSW_SQ). The pair work grows with the cluster size: ~4x
  (IVF_SQ) to ~16x (IVF_HNSW_SQ, some 45 minutes at the comparison rate measured there,
  an extrapolation) the 4.3e9 pairs compared with 1,000 clusters.

Training follows faiss's defaults in spirit: a random sample of at most
`sample_per_cluster` points per centroid, random initial centroids drawn from it, a fixed
number of iterations, and an empty cluster re-seeded with the sample point farthest from
its centroid. Dedup does not need a good clustering, only a local one: pairs that a border
splits are caught by comparing each point with the members of its next-nearest clusters.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Rows per assignment chunk: a `[chunk, K]` similarity block (256 MiB at K = 1000).
CHUNK = 65_536


def resolve_device(device: str) -> torch.device:
    """`auto` → CUDA when available, else CPU; `cpu`/`cuda` as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    return torch.device(device)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    *,
    iterations: int = 10,
    sample_per_cluster: int = 64,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Train `k` unit centroids on the unit rows of `x`.

    Args:
        x: `[N, D]` float32, unit rows.
        k: clusters, 1 <= k <= N.
        iterations: Lloyd iterations (assign, average, renormalize).
        sample_per_cluster: train on at most `k * sample_per_cluster` random rows.
        seed: sampling and initialization seed (same seed, same centroids on one device).
        device: `auto`, `cpu` or `cuda`.

    Returns:
        `[k, D]` float32 unit centroids.
    """
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    dev = resolve_device(device)
    rng = np.random.default_rng(seed)
    sample = min(n, k * sample_per_cluster)
    rows = np.sort(rng.choice(n, sample, replace=False)) if sample < n else np.arange(n)
    data = torch.from_numpy(np.ascontiguousarray(x[rows], dtype=np.float32)).to(dev)
    centroids = data[torch.from_numpy(rng.choice(sample, k, replace=False)).to(dev)].clone()
    for it in range(iterations):
        labels, best = _nearest(data, centroids, 1)
        labels, best = labels[:, 0], best[:, 0]
        sums = torch.zeros_like(centroids).index_add_(0, labels, data)
        counts = torch.bincount(labels, minlength=k)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):  # re-seed with the points that fit their centroid worst
            worst = torch.argsort(best)[: len(empty)]
            sums[empty] = data[worst]
            logger.debug("k-means iteration %d: re-seeded %d empty clusters", it, len(empty))
        centroids = _unit(sums)
    return centroids.cpu().numpy()


def _nearest(
    x: torch.Tensor, centroids: torch.Tensor, probes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(labels [N, probes] int64, sims [N, probes])`: the nearest centroids, nearest first."""
    labels, sims = [], []
    for start in range(0, len(x), CHUNK):
        s = x[start : start + CHUNK] @ centroids.T
        top = torch.topk(s, probes, dim=1)
        labels.append(top.indices)
        sims.append(top.values)
    return torch.cat(labels), torch.cat(sims)


def nearest_centroids(
    x: np.ndarray, centroids: np.ndarray, probes: int = 2, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """The `probes` nearest centroids of every row of `x`, nearest first.

    Args:
        x: `[N, D]` float32 unit rows.
        centroids: `[K, D]` float32 unit centroids.
        probes: how many (clamped to K).
        device: `auto`, `cpu` or `cuda`; rows travel to it in chunks.

    Returns:
        `(labels [N, probes] int32, similarities [N, probes] float32)`.
    """
    dev = resolve_device(device)
    probes = min(probes, len(centroids))
    c = torch.from_numpy(np.array(centroids, dtype=np.float32)).to(dev)
    labels = np.empty((len(x), probes), np.int32)
    sims = np.empty((len(x), probes), np.float32)
    for start in range(0, len(x), CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + CHUNK])).to(dev)
        lab, sim = _nearest(chunk, c, probes)
        labels[start : start + len(chunk)] = lab.cpu().numpy()
        sims[start : start + len(chunk)] = sim.cpu().numpy()
    return labels, sims
