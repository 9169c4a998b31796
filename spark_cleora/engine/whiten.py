"""PCA whitening of an embedding table, as pycleora 3.x ``whiten_embeddings`` does, distributed.

pycleora: centre, covariance in float64 (divided by n-1), eigen-decomposition, then
``(X - mean) @ (V / sqrt(max(λ, 1e-10)))`` with eigenvalues in descending order. Here the d x d
moments are summed per partition on the executors, reduced in one task, and only that d x d matrix
reaches the driver; the transform travels back inside the mapping function (no broadcast variable).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame

from .vectors import pack, unpack

EIG_FLOOR = 1e-10
_MOMENTS = "n long, s1 binary, s2 binary"


def _moments(batches: Iterable[pa.RecordBatch], dim: int) -> Iterator[pa.RecordBatch]:
    n, s1, s2 = 0, np.zeros(dim), np.zeros((dim, dim))
    for b in batches:
        x = unpack(b.column("vec"), dim).astype(np.float64)
        n += len(x)
        s1 += x.sum(axis=0)
        s2 += x.T @ x
    yield pa.RecordBatch.from_arrays(
        [pa.array([n], pa.int64()), pa.array([s1.tobytes()], pa.binary()), pa.array([s2.tobytes()], pa.binary())],
        names=["n", "s1", "s2"],
    )


def _sum_moments(batches: Iterable[pa.RecordBatch], dim: int) -> Iterator[pa.RecordBatch]:
    n, s1, s2 = 0, np.zeros(dim), np.zeros((dim, dim))
    for b in batches:
        for i in range(b.num_rows):
            n += b.column("n")[i].as_py()
            s1 += np.frombuffer(b.column("s1")[i].as_py(), dtype=np.float64)
            s2 += np.frombuffer(b.column("s2")[i].as_py(), dtype=np.float64).reshape(dim, dim)
    yield pa.RecordBatch.from_arrays(
        [pa.array([n], pa.int64()), pa.array([s1.tobytes()], pa.binary()), pa.array([s2.tobytes()], pa.binary())],
        names=["n", "s1", "s2"],
    )


def transform_from_moments(n: int, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean float32[d], transform float32[d, d]) from the row count, column sums and Gram matrix (float64);
    None for n <= 1."""
    if n <= 1:
        return None
    mean = s1 / n
    cov = (s2 - n * np.outer(mean, mean)) / (n - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    order = np.argsort(eigenvalues)[::-1]
    scale = 1.0 / np.sqrt(np.maximum(eigenvalues[order], EIG_FLOOR))
    return mean.astype(np.float32), (eigenvectors[:, order] * scale).astype(np.float32)


def whiten_array(x: np.ndarray) -> np.ndarray:
    """Whitened float32 ``x`` (all rows in memory: the one-task engine); same arithmetic as the table path."""
    x64 = x.astype(np.float64)
    t = transform_from_moments(len(x), x64.sum(axis=0), x64.T @ x64)
    return x if t is None else (x - t[0]) @ t[1]


def whitening_transform(x: DataFrame, *, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean float32[d], transform float32[d, d]) of ``x`` (id, packed vec); None for n <= 1."""
    partials = x.mapInArrow(lambda it: _moments(it, dim), _MOMENTS)
    row = partials.repartition(1).mapInArrow(lambda it: _sum_moments(it, dim), _MOMENTS).collect()[0]
    return transform_from_moments(
        int(row["n"]), np.frombuffer(row["s1"], dtype=np.float64),
        np.frombuffer(row["s2"], dtype=np.float64).reshape(dim, dim),
    )


def apply_whitening(x: DataFrame, mean: np.ndarray, transform: np.ndarray, *, dim: int) -> DataFrame:
    """(id, ..., vec) -> (id, ..., (vec - mean) @ transform), lazily, in float32 like pycleora (other
    columns pass through)."""

    def apply(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            out = (unpack(b.column("vec"), dim) - mean) @ transform
            yield b.set_column(b.schema.get_field_index("vec"), "vec", pack(out))

    return x.mapInArrow(apply, x.schema)


def whiten(x: DataFrame, *, dim: int) -> DataFrame:
    """Whitened ``x`` (needs ``x`` materialised: it is read twice)."""
    t = whitening_transform(x, dim=dim)
    return x if t is None else apply_whitening(x, *t, dim=dim)
