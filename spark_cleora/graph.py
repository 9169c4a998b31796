"""The hypergraph as two tables, never as clique pairs.

pycleora (2.x/3.x) semantics, per hyperedge h with entity multisets A_h and B_h (B_h = A_h for a
reflexive relation), weight w_h = 1/(|A_h|·|B_h|)::

    W = sum_h w_h (a_h b_hᵀ + b_h a_hᵀ)          a_h, b_h = count vectors of A_h, B_h
    D[x] = sum_h a_h[x]/|B_h| + b_h[x]/|A_h|      (pycleora's degree; not the row sum of W in general)
    left = W / D[x],   symmetric = W / sqrt(D[x] D[y])

W is never built: W·X = sum_h w_h (a_h (b_hᵀX) + b_h (a_hᵀX)) needs only per-hyperedge sums of member
vectors, so an iteration costs O(memberships) whatever the hyperedge sizes.

Tables (keyed by ``id`` = Spark ``xxhash64(entity)``, a 64-bit key; collisions are detected):

* ``memberships``: h, side, col, entity, id, weight (multiplicity), d (its share of D[id]),
  block (the hyperedge's block), first (one row per hyperedge is flagged, for counting)
* ``entities``: id, entity, column, output, occurrences, degree, blocks (the blocks that need its vector)

Both come out of two shuffles: memberships are partitioned by hyperedge once (sizes, degree shares
and the block all follow inside that partitioning), entities are one aggregate over memberships.
The iterations use neither directly: each block's memberships are compiled once into a sparse
"plan" (see :mod:`spark_cleora.propagate`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .config import Column

log = logging.getLogger(__name__)

MIN_BLOCK_MEMBERSHIPS = 20_000
#: Default block size in memberships x dim: a block's float64 working set stays around 512 MiB.
BLOCK_FLOATS = 1 << 26


class EntityHashCollisionError(RuntimeError):
    """Two different entity names have the same 64-bit key."""


@dataclass
class Graph:
    entities: DataFrame
    memberships: DataFrame
    reflexive: bool
    num_blocks: int
    n_entities: int
    n_memberships: int
    n_hyperedges: int


def default_block_memberships(dim: int) -> int:
    return max(MIN_BLOCK_MEMBERSHIPS, BLOCK_FLOATS // max(dim, 1))


def choose_num_blocks(n_memberships: int, block_memberships: int, parallelism: int) -> int:
    """Blocks of at most ~``block_memberships`` memberships, spread over up to ``parallelism`` tasks.

    Small graphs get few blocks (each block costs a copy of its entities' vectors), large graphs get
    at least one block per task.
    """
    by_parallelism = min(parallelism, math.ceil(n_memberships / MIN_BLOCK_MEMBERSHIPS))
    return max(1, by_parallelism, math.ceil(n_memberships / block_memberships))


MEMBERSHIP_SCHEMA = (
    "h long, side int, col int, entity string, id long, weight double, d double, block int, first boolean, "
    "h_rows long"
)
#: rows of one Arrow batch leaving the membership builder
_OUT_BATCH = 1 << 16


#: raw rows one graph-building task holds in memory (a partition is sorted in numpy as a whole)
PARTITION_ROWS = 4_000_000


def graph_partitions(n_rows: int, parallelism: int) -> int:
    """Partitions for the membership build: every core busy, no partition above ``PARTITION_ROWS``."""
    return max(1, parallelism, math.ceil(n_rows / PARTITION_ROWS))


def build_memberships(raw: DataFrame, *, reflexive: bool, num_blocks: int, num_partitions: int) -> DataFrame:
    """One row per (hyperedge, side, column, entity) with its multiplicity, degree share and block.

    One shuffle puts every hyperedge in one partition; numpy then sorts each partition once and derives
    the multiplicities, the hyperedge sizes and the degree shares from it (a sort-based aggregate plus
    a window in Spark SQL took 2-3x longer for the same work).
    """
    # the keys are computed after the shuffle (same stage as the numpy pass): fewer bytes to shuffle
    keyed = raw.select("h", "side", "col", "entity", "weight").repartition(num_partitions, "h").select(
        "h", "side", "col", "entity", "weight",
        F.xxhash64("entity").alias("id"),
        # a second, independent hash keeps two names apart even if their 64-bit ids collide, so the
        # collision check in count_entities sees both names
        F.hash("entity").alias("_id2"),
        F.pmod(F.xxhash64("h"), F.lit(num_blocks)).cast("int").alias("block"),
    )

    def build(batches):
        return memberships_of_partition(batches, reflexive=reflexive)

    return keyed.mapInArrow(build, MEMBERSHIP_SCHEMA)


def memberships_of_partition(batches, *, reflexive: bool):
    """``mapInArrow`` body: all raw rows of some hyperedges -> their membership rows (see module doc)."""
    batches = [b for b in batches if b.num_rows]
    if not batches:
        return
    t = pa.Table.from_batches(batches)
    h = t.column("h").to_numpy()
    side = t.column("side").to_numpy()
    col = t.column("col").to_numpy()
    ids = t.column("id").to_numpy()
    id2 = t.column("_id2").to_numpy()
    order = np.lexsort((id2, ids, col, side, h))  # the last key is the primary one
    h, side, col, ids, id2 = h[order], side[order], col[order], ids[order], id2[order]
    new = np.ones(len(h), dtype=bool)
    new[1:] = (h[1:] != h[:-1]) | (side[1:] != side[:-1]) | (col[1:] != col[:-1]) | (ids[1:] != ids[:-1]) | (
        id2[1:] != id2[:-1])
    starts = np.flatnonzero(new)
    weight = np.add.reduceat(t.column("weight").to_numpy()[order], starts)
    rows = order[starts]
    h, side, col, ids = h[starts], side[starts], col[starts], ids[starts]
    new_h = np.ones(len(h), dtype=bool)
    new_h[1:] = h[1:] != h[:-1]
    h_starts = np.flatnonzero(new_h)
    h_of = np.cumsum(new_h) - 1
    n_a = np.bincount(h_of, weights=np.where(side == 0, weight, 0.0))[h_of]
    if reflexive:
        d = 2.0 * weight / n_a
    else:
        n_b = np.bincount(h_of, weights=np.where(side == 1, weight, 0.0))[h_of]
        d = np.where(side == 0, weight / n_b, weight / n_a)
    h_rows = np.diff(np.r_[h_starts, len(h)])[h_of]
    out = pa.table({
        "h": h, "side": side.astype(np.int32), "col": col.astype(np.int32),
        "entity": t.column("entity").take(pa.array(rows)), "id": ids, "weight": weight, "d": d,
        "block": t.column("block").take(pa.array(rows)), "first": new_h, "h_rows": h_rows.astype(np.int64),
    })
    yield from out.to_batches(max_chunksize=_OUT_BATCH)


def build_entities(memberships: DataFrame, columns: tuple[Column, ...]) -> DataFrame:
    """Entities with their first column (in spec order), output flag, degree and blocks."""
    col_names = F.array(*[F.lit(c.name) for c in columns])
    outputs = F.array(*[F.lit(not c.transient) for c in columns])
    return (
        memberships.groupBy("id")
        .agg(
            F.min("entity").alias("entity"),
            F.max("entity").alias("_entity_max"),
            F.min("col").alias("_col"),
            F.max(F.element_at(outputs, F.col("col") + 1)).alias("output"),
            F.sum("weight").alias("occurrences"),
            F.sum("d").alias("degree"),
            F.array_sort(F.collect_set("block")).alias("blocks"),
        )
        .withColumn("column", F.element_at(col_names, F.col("_col") + 1))
        .drop("_col")
    )


def routes(entities: DataFrame, markov: str) -> DataFrame:
    """Which blocks need each entity's vector, with the Markov scalings.

    left:      (W/D) X       -> pre = 1,     post = 1/D
    symmetric: D^-½ W D^-½ X -> pre = D^-½,  post = D^-½
    """
    if markov == "left":
        pre, post = F.lit(1.0), 1.0 / F.col("degree")
    else:
        pre = post = 1.0 / F.sqrt(F.col("degree"))
    return entities.select("id", F.explode("blocks").alias("block"), pre.alias("pre"), post.alias("post"))


def count_entities(entities: DataFrame) -> int:
    """Number of entities; raises if two names share a key (checked in the same pass)."""
    row = entities.agg(
        F.count(F.lit(1)).alias("n"), F.sum((F.col("entity") != F.col("_entity_max")).cast("long")).alias("bad")
    ).collect()[0]
    if row["bad"]:
        bad = entities.filter(F.col("entity") != F.col("_entity_max")).limit(3).collect()
        pairs = ", ".join(f"{r['entity']!r} vs {r['_entity_max']!r}" for r in bad)
        raise EntityHashCollisionError(f"different entity names share a 64-bit key ({pairs}); rename one of them")
    return int(row["n"])


class HyperedgeTooLargeError(ValueError):
    """One hyperedge needs more memory than a Python worker is allowed for one block."""


def count_memberships(memberships: DataFrame) -> tuple[int, int, int]:
    """(memberships, hyperedges, rows of the largest hyperedge) in one pass."""
    row = memberships.agg(
        F.count(F.lit(1)).alias("m"), F.sum(F.col("first").cast("long")).alias("h"), F.max("h_rows").alias("big")
    ).collect()[0]
    return int(row["m"]), int(row["h"] or 0), int(row["big"] or 0)


#: bytes a block needs per (membership row x dimension): packed input, float64 copy, float64 result, output
BYTES_PER_ROW_DIM = 24


def check_hyperedge_fits(largest_rows: int, dim: int, memory_gb: float) -> None:
    """A hyperedge lives in one block, so its rows x dim must fit one worker's block memory.

    Raises with the numbers and the ways out instead of letting a Python worker die of memory.
    """
    need = largest_rows * dim * BYTES_PER_ROW_DIM
    if need > memory_gb * 2**30:
        raise HyperedgeTooLargeError(
            f"the largest hyperedge has {largest_rows:,} distinct members; at dim {dim} its block needs "
            f"~{need / 2**30:.1f} GiB in one Python worker, above --block-memory-gb {memory_gb:g}. Raise "
            "--block-memory-gb (and the executors' memory), lower --dim, or split such hyperedges (e.g. "
            "sessions with --timestamp/--session-gap)."
        )
