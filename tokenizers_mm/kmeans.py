"""k-means in torch (k-means++ seeding, Lloyd iterations, chunked distances) and nearest-centroid lookup.

Chunked so that memory stays at ``chunk x K`` floats: a dense 100k x 4096 distance matrix would be 1.6 GB and
the allocator, not the matmul, would dominate the run time.
"""

from __future__ import annotations

import torch


def nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and squared distance of the nearest centroid for each row. x (N, D), centroids (K, D)."""
    c2 = (centroids * centroids).sum(1)  # (K,)
    idx = torch.empty(x.shape[0], dtype=torch.long)
    dist = torch.empty(x.shape[0], dtype=x.dtype)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]  # (n, D)
        d = torch.addmm(c2, xs, centroids.T, alpha=-2.0)  # (n, K): |c|^2 - 2 x.c
        m, i = d.min(1)
        idx[s : s + chunk] = i
        dist[s : s + chunk] = (m + (xs * xs).sum(1)).clamp_min(0)
    return idx, dist


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator, sample: int | None = None) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling) on a random subsample of ``sample`` rows (default 4 * k).

    Sampling by cumsum + searchsorted: torch.multinomial re-normalises the whole vector on each of the k calls."""
    n = x.shape[0]
    sample = min(n, sample or 4 * k)
    s = x[torch.randperm(n, generator=generator)[:sample]]  # (S, D)
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype)
    centroids[0] = s[torch.randint(sample, (1,), generator=generator)]
    d2 = ((s - centroids[0]) ** 2).sum(1)  # (S,)
    for j in range(1, k):
        cdf = torch.cumsum(d2.double(), 0)
        i = torch.searchsorted(cdf, torch.rand(1, generator=generator, dtype=torch.float64) * cdf[-1])
        centroids[j] = s[i.clamp_max(sample - 1)]
        d2 = torch.minimum(d2, ((s - centroids[j]) ** 2).sum(1))
    return centroids


def kmeans(x: torch.Tensor, k: int, *, iters: int = 15, seed: int = 0, progress=None) -> torch.Tensor:
    """Centroids (k, D) of x (N, D), N >= k. Empty clusters are re-seeded with the worst-fitted points.

    ``progress``: optional callable(iteration, mean squared error) for logging.
    """
    x = x.float().contiguous()
    if x.shape[0] < k:
        raise ValueError(f"k-means needs at least k={k} points, got {x.shape[0]}")
    g = torch.Generator().manual_seed(seed)
    c = kmeans_pp_init(x, k, g)
    for it in range(iters):
        idx, dist = nearest(x, c)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)  # (k,)
        sums = torch.zeros_like(c).index_add_(0, idx, x)  # (k, D)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp_min(1)[:, None])
        if empty.any():
            c[empty] = x[dist.topk(int(empty.sum())).indices]
        if progress is not None:
            progress(it, float(dist.mean()))
    return c
