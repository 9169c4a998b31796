"""Embeddings of the same entities from several runs, combined by a (weighted) average.

Cleora's start vectors are a pure function of (entity, dimension, seed, init hash), so runs on similar
data (e.g. two halves of one event table) propagate the same start vectors through similar graphs and
end up in the same space; their per-entity average, L2-normalised, approximates the run on all the data.
This only holds for runs with the same dimension, init hash and seed, which :func:`check_compatible`
enforces.

Per entity the result is ``normalise(sum_r w_r x_r)`` over the runs ``r`` that have it (a weighted
mean up to its scale, which the normalisation removes). An entity missing from some runs is kept with
the runs that have it; the output's ``runs`` column says how many. ``degree`` and ``occurrences`` are
summed over the runs (for runs on disjoint hyperedges that is the whole data's value).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy import sparse

from ..errors import BadInputError, ConfigError
from ..runtime.machine import shuffle_partitions
from .propagate import normalize_rows
from .vectors import from_list_array, to_list_array

log = logging.getLogger(__name__)

#: what must agree between combined runs (the start vectors depend on them; dim also the shape)
MUST_MATCH = ("dim", "init", "seed")

OUT_SCHEMA = "entity string, column string, degree double, occurrences double, embedding array<float>, runs int"


def check_compatible(configs: Sequence[dict[str, Any]], names: Sequence[str]) -> None:
    """Refuse runs whose start vectors differ: another ``dim``, ``init`` or ``seed`` (or multiscale parts)."""
    first = configs[0]
    for cfg, name in zip(configs[1:], names[1:]):
        for key in (*MUST_MATCH, "multiscale", "whiten"):
            a, b = first.get(key), cfg.get(key)
            if key in ("multiscale",):
                a, b = list(a or []), list(b or [])
            if a != b:
                raise ConfigError(
                    f"cannot combine {names[0]!r} ({key}={a!r}) with {name!r} ({key}={b!r}): runs start from "
                    f"the same vectors only with the same {', '.join(MUST_MATCH)} (and the same multiscale and "
                    "whitening); re-embed one of them with the other's options")


def check_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    if weights is None:
        return [1.0] * n
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ConfigError(f"--weights: {len(w)} weight(s) for {n} embedding directories; give one per directory")
    if not all(np.isfinite(x) and x > 0 for x in w):
        raise ConfigError(f"--weights must be positive finite numbers; got {w}")
    return w


def combine(frames: Sequence[DataFrame], *, dim: int, weights: Sequence[float] | None = None,
            num_partitions: int | None = None) -> DataFrame:
    """The combined embeddings of ``frames`` (each an embed output: ``entity``, ``embedding`` of length
    ``dim``; ``column``, ``degree``, ``occurrences`` when present), lazily; see the module docstring.

    One shuffle by entity, then each partition's rows are summed per entity with one sparse product
    (no per-entity work on the driver).
    """
    if not frames:
        raise ConfigError("combine needs at least one embeddings table")
    w = check_weights(weights, len(frames))
    parts = []
    for i, df in enumerate(frames):
        def opt(name: str, kind: str):
            return F.col(name).cast(kind) if name in df.columns else F.lit(None).cast(kind)

        parts.append(df.select(F.col("entity").cast("string").alias("entity"), opt("column", "string").alias("column"),
                               opt("degree", "double").alias("degree"), opt("occurrences", "double").alias("occurrences"),
                               F.col("embedding").cast("array<float>").alias("embedding"),
                               F.lit(w[i]).alias("w")))
    rows = parts[0]
    for p in parts[1:]:
        rows = rows.unionByName(p)
    n = num_partitions or shuffle_partitions(rows.sparkSession)

    def reduce(batches):
        batches = [b for b in batches if b.num_rows]
        if batches:
            yield combine_rows(pa.Table.from_batches(batches), dim=dim)

    return rows.repartition(n, "entity").mapInArrow(reduce, OUT_SCHEMA)


def combine_rows(t: pa.Table, *, dim: int) -> pa.RecordBatch:
    """All rows of some entities -> one row per entity: ``normalise(sum w x)``, summed degree and
    occurrences, the smallest column name, and the number of rows (runs)."""
    import pyarrow.compute as pc

    col = t.column("embedding").combine_chunks()
    if col.null_count or not np.all(np.diff(np.asarray(col.offsets)) == dim):
        raise BadInputError(f"combine: every embedding must be non-null and of length {dim}")
    codes = pc.dictionary_encode(t.column("entity")).combine_chunks()
    idx = codes.indices.to_numpy()
    names = codes.dictionary
    n_ent = len(names)
    rows = np.arange(len(idx))
    w = t.column("w").to_numpy()
    # one sparse (entities x rows) product sums each entity's weighted vectors
    sum_w = sparse.csr_matrix((w, (idx, rows)), shape=(n_ent, len(idx)))
    total = sum_w @ from_list_array(col, dim).astype(np.float64)
    normalize_rows(total)
    ones = sparse.csr_matrix((np.ones(len(idx)), (idx, rows)), shape=(n_ent, len(idx)))

    def summed(name: str) -> pa.Array:
        v = t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        present = ~np.isnan(v)
        s = ones @ np.where(present, v, 0.0)
        any_present = (ones @ present.astype(np.float64)) > 0
        return pa.array(s, mask=~any_present)

    first_col = pa.array(min_by_group(t.column("column").to_pylist(), idx, n_ent), pa.string())
    return pa.RecordBatch.from_arrays(
        [names, first_col, summed("degree"), summed("occurrences"), to_list_array(total),
         pa.array(np.bincount(idx, minlength=n_ent).astype(np.int32))],
        names=["entity", "column", "degree", "occurrences", "embedding", "runs"])


def min_by_group(values: list[str | None], idx: np.ndarray, n: int) -> list[str | None]:
    """The smallest non-null value per group (a few runs per entity: a plain loop over the rows)."""
    out: list[str | None] = [None] * n
    for v, g in zip(values, idx):
        if v is not None and (out[g] is None or v < out[g]):
            out[g] = v
    return out


def presence_counts(combined: DataFrame) -> dict[str, int]:
    """Entities per number of runs that have them (one row per run count)."""
    return {str(int(r["runs"])): int(r["count"]) for r in combined.groupBy("runs").count().collect()}
