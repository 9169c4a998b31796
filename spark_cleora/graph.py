"""The hypergraph as three tables, never as clique pairs.

pycleora (2.x/3.x) semantics, per hyperedge h with entity multisets A_h and B_h (B_h = A_h for a
reflexive relation), weight w_h = 1/(|A_h|·|B_h|)::

    W = sum_h w_h (a_h b_hᵀ + b_h a_hᵀ)          a_h, b_h = count vectors of A_h, B_h
    D[x] = sum_h a_h[x]/|B_h| + b_h[x]/|A_h|      (pycleora's degree; not the row sum of W in general)
    left = W / D[x],   symmetric = W / sqrt(D[x] D[y])

W is never built: W·X = sum_h w_h (a_h (b_hᵀX) + b_h (a_hᵀX)) needs only per-hyperedge sums of member
vectors, so an iteration costs O(memberships) whatever the hyperedge sizes.

Tables (all keyed by ``id`` = Spark ``xxhash64(entity)``, a 64-bit key; collisions are detected):

* ``entities``: id, entity, column, output, degree, occurrences
* ``memberships``: h, side, id, weight (multiplicity)
* ``routes``: id, block, pre, post — which hyperedge blocks need an entity's vector, and the Markov
  scalings applied before (``pre``) and after (``post``) the multiplication.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from .config import Column

log = logging.getLogger(__name__)


class EntityHashCollisionError(RuntimeError):
    """Two different entity names have the same 64-bit key."""


@dataclass
class Graph:
    entities: DataFrame
    memberships: DataFrame
    routes: DataFrame
    reflexive: bool
    num_blocks: int
    n_entities: int
    n_memberships: int
    n_hyperedges: int


def block_of(h: str = "h", num_blocks: int = 1):
    """Hyperedge -> block: a whole hyperedge always lives in one block."""
    return F.pmod(F.xxhash64(F.col(h)), F.lit(num_blocks)).cast("int")


def build_entities(memberships: DataFrame, columns: tuple[Column, ...]) -> DataFrame:
    """Entities with their first column (in spec order) and whether any non-transient column has them."""
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
        )
        .withColumn("column", F.element_at(col_names, F.col("_col") + 1))
        .drop("_col")
    )


def build_memberships(raw: DataFrame) -> DataFrame:
    """One row per (hyperedge, side, entity) with its multiplicity; a column maps to exactly one side."""
    return (
        raw.groupBy("h", "side", "col", "entity")
        .agg(F.sum("weight").alias("weight"))
        .withColumn("id", F.xxhash64("entity"))
    )


def degrees(memberships: DataFrame, reflexive: bool) -> DataFrame:
    """pycleora's D: each membership on side A adds weight/|B_h|, on side B weight/|A_h|."""
    sizes = memberships.groupBy("h").agg(
        F.sum(F.when(F.col("side") == 0, F.col("weight")).otherwise(0.0)).alias("na"),
        F.sum(F.when(F.col("side") == 1, F.col("weight")).otherwise(0.0)).alias("nb"),
    )
    if reflexive:
        sizes = sizes.withColumn("nb", F.col("na"))
    contrib = (
        memberships.join(sizes, "h")
        .select(
            "id",
            F.when(F.col("side") == 0, F.col("weight") / F.col("nb"))
            .otherwise(F.col("weight") / F.col("na"))
            .alias("d"),
        )
    )
    if reflexive:
        contrib = contrib.withColumn("d", F.col("d") * 2.0)
    return contrib.groupBy("id").agg(F.sum("d").alias("degree"))


MIN_BLOCK_MEMBERSHIPS = 20_000


def choose_num_blocks(n_memberships: int, block_memberships: int, parallelism: int) -> int:
    """Blocks of at most ~``block_memberships`` memberships, spread over up to ``parallelism`` tasks.

    Small graphs get few blocks (each block costs a copy of its entities' vectors), large graphs get
    at least one block per task.
    """
    by_parallelism = min(parallelism, math.ceil(n_memberships / MIN_BLOCK_MEMBERSHIPS))
    return max(1, by_parallelism, math.ceil(n_memberships / block_memberships))


def build_routes(memberships: DataFrame, entities: DataFrame, num_blocks: int, markov: str) -> DataFrame:
    """Which blocks need each entity's vector, with the Markov scalings.

    left:      (W/D) X     -> pre = 1,          post = 1/D
    symmetric: D^-½ W D^-½ X -> pre = D^-½,      post = D^-½
    """
    deg = entities.select("id", "degree")
    if markov == "left":
        scal = deg.select("id", F.lit(1.0).alias("pre"), (1.0 / F.col("degree")).alias("post"))
    else:
        inv_sqrt = 1.0 / F.sqrt(F.col("degree"))
        scal = deg.select("id", inv_sqrt.alias("pre"), inv_sqrt.alias("post"))
    pairs = memberships.select("id", block_of("h", num_blocks).alias("block")).distinct()
    return pairs.join(scal, "id")


def count_entities(entities: DataFrame) -> int:
    """Number of entities; raises if two names share a key (checked in the same pass)."""
    row = entities.agg(
        F.count(F.lit(1)).alias("n"), F.sum((F.col("entity") != F.col("_entity_max")).cast("long")).alias("bad")
    ).collect()[0]
    if row["bad"]:
        _raise_collisions(entities)
    return int(row["n"])


def count_memberships(memberships: DataFrame) -> tuple[int, int]:
    """(memberships, hyperedges) in one pass."""
    row = memberships.agg(F.count(F.lit(1)).alias("m"), F.countDistinct("h").alias("h")).collect()[0]
    return int(row["m"]), int(row["h"])


def _raise_collisions(entities: DataFrame) -> None:
    bad = entities.filter(F.col("entity") != F.col("_entity_max")).limit(3).collect()
    if bad:
        pairs = ", ".join(f"{r['entity']!r} vs {r['_entity_max']!r}" for r in bad)
        raise EntityHashCollisionError(
            f"different entity names share a 64-bit key ({pairs}); rename one of them"
        )
