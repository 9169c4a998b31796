"""The model's input features: normalised sketches, time context, customer and event columns.

One numpy function turns a batch of example (or prediction) rows into network inputs, so training
and inference read the rows identically:

* sketches: ``long`` and ``short`` L2-normalised per W-block (the official EMDE input), concatenated;
  targets L1-normalised per block (each block a distribution over its W buckets);
* context of the row's time ``t`` (UTC): hour of day and day of week as (sin, cos) pairs;
* numeric feature columns standardised with the training split's mean and standard deviation
  (missing -> 0, the mean); categorical columns mapped to an index in a vocabulary of the most
  frequent training values (0 = unknown or missing), which the network embeds.

The :class:`FeatureSpec` (moments and vocabularies) is fitted on Spark (small aggregates) and stored
in the model's manifest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from scipy import sparse

CONTEXT_FEATURES = 4  # sin/cos hour of day, sin/cos day of week


@dataclass(frozen=True)
class FeatureSpec:
    """Which feature columns the model reads and how they are encoded."""

    context: bool = True
    numeric: tuple[tuple[str, float, float], ...] = ()  # (column, mean, std)
    categorical: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())  # (column, vocabulary)

    @property
    def n_numeric(self) -> int:
        return (CONTEXT_FEATURES if self.context else 0) + len(self.numeric)

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table sizes (vocabulary + 1 for unknown)."""
        return [len(v) + 1 for _, v in self.categorical]

    @property
    def columns(self) -> list[str]:
        return [c for c, _, _ in self.numeric] + [c for c, _ in self.categorical]

    def to_dict(self) -> dict[str, Any]:
        return {"context": self.context, "numeric": [list(x) for x in self.numeric],
                "categorical": [[c, list(v)] for c, v in self.categorical]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        return cls(context=bool(d["context"]), numeric=tuple((c, float(m), float(s)) for c, m, s in d["numeric"]),
                   categorical=tuple((c, tuple(v)) for c, v in d["categorical"]))

    def encode(self, tbl: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """``float32 (n, n_numeric)`` and ``int64 (n, n_categorical)`` inputs of a batch of rows."""
        n = tbl.num_rows
        parts = [context_features(tbl.column("t").to_numpy(zero_copy_only=False))] if self.context else []
        for c, mean, std in self.numeric:
            x = tbl.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
            x = np.where(np.isfinite(x), (x - mean) / std, 0.0)
            parts.append(x[:, None])
        num = np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((n, 0), np.float32)
        cats = []
        for c, vocab in self.categorical:
            index = {v: k + 1 for k, v in enumerate(vocab)}
            vals = tbl.column(c).cast(pa.string()).to_pylist()
            cats.append(np.array([index.get(v, 0) for v in vals], dtype=np.int64))
        cat = np.stack(cats, axis=1) if cats else np.zeros((n, 0), np.int64)
        return num, cat


def context_features(t: np.ndarray) -> np.ndarray:
    """(sin, cos) of the hour of day and of the day of week (Monday = 0) of epoch seconds, UTC."""
    t = np.asarray(t, dtype=np.float64)
    hour = np.mod(t, 86400.0) / 3600.0
    dow = np.mod(np.floor(t / 86400.0) + 3.0, 7.0)  # 1970-01-01 was a Thursday
    a, b = 2 * math.pi * hour / 24.0, 2 * math.pi * dow / 7.0
    return np.stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=1)


def fit_feature_spec(examples: DataFrame, columns: list[str], *, context: bool = True,
                     max_vocabulary: int = 1000) -> FeatureSpec:
    """Moments of numeric columns and vocabularies (most frequent values) of the others, over ``examples``."""
    numeric, categorical = [], []
    num_cols = [c for c in columns if isinstance(examples.schema[c].dataType, T.NumericType)]
    if num_cols:
        r = examples.agg(*[F.avg(c).alias(f"m{k}") for k, c in enumerate(num_cols)],
                         *[F.stddev_pop(c).alias(f"s{k}") for k, c in enumerate(num_cols)]).collect()[0]
        for k, c in enumerate(num_cols):
            mean = float(r[f"m{k}"] or 0.0)
            std = float(r[f"s{k}"] or 0.0)
            numeric.append((c, mean, std if std > 0 else 1.0))
    for c in columns:
        if c in num_cols:
            continue
        top = examples.filter(F.col(c).isNotNull()).groupBy(F.col(c).cast("string").alias("v")) \
            .count().orderBy(F.desc("count"), "v").limit(max_vocabulary).collect()
        categorical.append((c, tuple(r["v"] for r in top)))
    return FeatureSpec(context=context, numeric=tuple(numeric), categorical=tuple(categorical))


def csr(tbl: pa.Table, name: str, length: int) -> sparse.csr_matrix:
    """The sparse sketch column pair ``name_idx``/``name_val`` as CSR ``(rows, length)``."""
    idx = tbl.column(f"{name}_idx").combine_chunks()
    val = tbl.column(f"{name}_val").combine_chunks()
    offsets = np.asarray(idx.offsets, dtype=np.int64)
    data = val.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    ind = idx.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    return sparse.csr_matrix((data, ind, offsets - offsets[0]), shape=(tbl.num_rows, length))


def block_normalize(x: np.ndarray, width: int, norm: str) -> np.ndarray:
    """Normalise every W-block of the rows of a dense matrix to unit L2 norm or L1 sum (0 stays 0)."""
    b = x.reshape(len(x), -1, width)
    d = np.sqrt((b * b).sum(-1, keepdims=True)) if norm == "l2" else b.sum(-1, keepdims=True)
    return np.divide(b, d, out=np.zeros_like(b), where=d > 0).reshape(len(x), -1)


def sketch_inputs(long: sparse.csr_matrix, short: sparse.csr_matrix, width: int) -> np.ndarray:
    """``float32 (n, 2L)``: both input sketches L2-normalised per block."""
    return np.concatenate([block_normalize(long.toarray(), width, "l2"),
                           block_normalize(short.toarray(), width, "l2")], axis=1).astype(np.float32)
