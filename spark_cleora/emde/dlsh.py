"""Density-dependent LSH (DLSH), the EMDE coder: numpy math, no Spark.

One partitioning = K hyperplanes ``sgn(z . r_k - b_k)`` over standardised embeddings ``z``; the K bits
(first hyperplane = most significant) pick one of ``W = 2**K`` buckets. N independent partitionings
per source; the absolute id of partitioning n's bucket c in source m is ``offset_m + n * W + c`` with
``offset_m = sum of N * W over earlier sources``. Biases sit at a quantile of each projection over the
fitted items (the median by default), so every hyperplane cuts where the items are.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError


@dataclass(frozen=True)
class SourceParams:
    """The fitted coder of one embedding source (everything needed to encode an item)."""

    name: str
    dim: int
    offset: int
    fitted_on: int
    mean: np.ndarray = field(repr=False)  # (dim,)
    scale: np.ndarray = field(repr=False)  # (dim,) standard deviations, 1 where constant
    directions: np.ndarray = field(repr=False)  # (dim, N*K)
    biases: np.ndarray = field(repr=False)  # (N*K,)


def rng_for(seed: int, source_index: int, stream: int) -> np.random.Generator:
    """Independent, reproducible streams per (seed, source, purpose)."""
    return np.random.default_rng([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF, source_index, stream])


def draw_directions(*, dim: int, depth: int, bits: int, seed: int, source_index: int) -> np.ndarray:
    """``(dim, depth*bits)`` i.i.d. standard normal directions (the scale is irrelevant: only signs count)."""
    return rng_for(seed, source_index, 0).standard_normal((dim, depth * bits))


def quantile_levels(*, depth: int, bits: int, seed: int, source_index: int, bias: str) -> np.ndarray:
    """The quantile of each projection its bias sits at: 0.5, or U(0, 1) levels (paper's variant)."""
    if bias == "median":
        return np.full(depth * bits, 0.5)
    return rng_for(seed, source_index, 1).random(depth * bits)


def project(emb: np.ndarray, *, mean: np.ndarray, scale: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Projections of standardised embeddings on the directions, float64 ``(n, depth*bits)``."""
    z = (np.asarray(emb, dtype=np.float64) - mean) / scale
    return z @ directions


def biases_between(at: np.ndarray, above: np.ndarray) -> np.ndarray:
    """The bias of each hyperplane: midway between the quantile value and the next larger projection.

    No fitted item lies on a bias, so its bit cannot flip with the last-ulp differences of a matrix
    product evaluated in another batch; for the median this is exactly ``np.median``'s value. Where
    nothing lies above (the quantile is the maximum), the bias sits just above it.
    """
    at = np.asarray(at, dtype=np.float64)
    above = np.asarray(above, dtype=np.float64)
    fallback = at + 1e-9 * (np.abs(at) + 1.0)
    mid = at + (above - at) / 2
    return np.where(np.isfinite(above) & (above > at), mid, fallback)


def encode(params: SourceParams, emb: np.ndarray, *, depth: int, bits: int) -> np.ndarray:
    """Absolute bucket ids ``int32 (n, depth)`` of the embeddings ``emb (n, dim)``."""
    proj = project(emb, mean=params.mean, scale=params.scale, directions=params.directions)
    return codes_from_projections(proj, params.biases, depth=depth, bits=bits, offset=params.offset)


def codes_from_projections(proj: np.ndarray, biases: np.ndarray, *, depth: int, bits: int,
                           offset: int) -> np.ndarray:
    """K bits per partitioning -> ``offset + n * 2**K + bucket`` (first hyperplane = top bit)."""
    n = proj.shape[0]
    on = (proj > biases).reshape(n, depth, bits).astype(np.int64)
    weights = np.left_shift(1, np.arange(bits - 1, -1, -1, dtype=np.int64))
    rel = on @ weights
    return (offset + np.arange(depth, dtype=np.int64) * (1 << bits) + rel).astype(np.int32)


def batch_moments(emb: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """``(count, mean, sum of squared deviations)`` of one batch, in float64."""
    x = np.asarray(emb, dtype=np.float64)
    if len(x) == 0:
        return 0, np.zeros(x.shape[1]), np.zeros(x.shape[1])
    mu = x.mean(0)
    return len(x), mu, ((x - mu) ** 2).sum(0)


def merge_moments(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[int, np.ndarray, np.ndarray]:
    """Combine per-batch ``(count, mean, M2)`` into the whole table's (Chan et al.'s pairwise update)."""
    n, mean, m2 = 0, None, None
    for cnt, mu, sq in parts:
        if cnt == 0:
            continue
        if mean is None:
            n, mean, m2 = cnt, mu.astype(np.float64), sq.astype(np.float64)
            continue
        tot = n + cnt
        delta = mu - mean
        mean = mean + delta * (cnt / tot)
        m2 = m2 + sq + delta * delta * (n * cnt / tot)
        n = tot
    if mean is None:
        raise BadInputError("no rows to fit on")
    return n, mean, m2


def params_digest(sources: list[SourceParams], header: str) -> str:
    """A content hash of a coder: equal digests <=> identical codes for every input."""
    h = hashlib.sha256(header.encode())
    for s in sources:
        h.update(f"|{s.name}|{s.dim}|{s.offset}|".encode())
        for arr in (s.mean, s.scale, s.directions, s.biases):
            h.update(np.ascontiguousarray(arr, dtype="<f8").tobytes())
    return h.hexdigest()[:16]
