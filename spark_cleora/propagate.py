"""One Cleora iteration: X <- rownorm(M X), as a join-and-aggregate on Spark.

Block routing (as Spark's ALS does): hyperedges are hashed into blocks; each entity vector is sent
once to every block that has one of its hyperedges (not once per membership). A Python worker then
multiplies a whole block with scipy sparse matrices:

    S_A = A X,  S_B = B X               per-hyperedge sums of member vectors (A, B: h x e counts)
    Y   = Aᵀ (w ⊙ S_B) + Bᵀ (w ⊙ S_A)    each member gets w_h times the other side's sum

and emits one partial vector per (entity, block). The JVM sums the partials per entity with
Spark 4.3's ``vector_sum`` (partial aggregation, no Python) and L2-normalises each row.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy import sparse

from .graph import block_of
from .init import arrow_to_vectors, vectors_to_arrow

PARTIAL_SCHEMA = "id long, vec array<float>"
NORM_EPS = 1e-10  # pycleora 3.x: x / max(||x||, 1e-10); an all-zero row stays zero


def multiply_block(routed: pa.Table, members: pa.Table, *, dim: int, reflexive: bool) -> pa.Table:
    """Multiply one block: routed vectors ``(id, pre, post, vec)`` x memberships ``(h, side, member, weight)``."""
    if routed.num_rows == 0 or members.num_rows == 0:
        return pa.table({"id": pa.array([], pa.int64()), "vec": vectors_to_arrow(np.zeros((0, dim)))})
    ids = routed.column("id").to_numpy()
    x = arrow_to_vectors(routed.column("vec"), dim).astype(np.float64)
    x *= routed.column("pre").to_numpy()[:, None]
    order = np.argsort(ids, kind="stable")
    m_ids = members.column("member").to_numpy()
    e_idx = order[np.searchsorted(ids, m_ids, sorter=order)]
    h_keys, h_idx = np.unique(members.column("h").to_numpy(), return_inverse=True)
    n_h, n_e = len(h_keys), len(ids)
    weight = members.column("weight").to_numpy().astype(np.float64)
    side = members.column("side").to_numpy()

    def incidence(mask: np.ndarray) -> sparse.csr_matrix:
        return sparse.csr_matrix((weight[mask], (h_idx[mask], e_idx[mask])), shape=(n_h, n_e))

    a = incidence(side == 0)
    s_a = a @ x
    n_a = np.asarray(a.sum(axis=1)).ravel()
    if reflexive:
        y = a.T @ (s_a * (2.0 / (n_a * n_a))[:, None])
    else:
        b = incidence(side == 1)
        s_b = b @ x
        n_b = np.asarray(b.sum(axis=1)).ravel()
        w = 1.0 / (n_a * n_b)
        y = a.T @ (s_b * w[:, None]) + b.T @ (s_a * w[:, None])
    y *= routed.column("post").to_numpy()[:, None]
    return pa.table({"id": pa.array(ids, pa.int64()), "vec": vectors_to_arrow(y)})


def l2_normalize(vec: str = "vec"):
    """Row L2 normalisation in the JVM, float32 like pycleora."""
    norm = F.greatest(F.vector_norm(F.col(vec)), F.lit(NORM_EPS).cast("float"))
    return F.transform(F.col(vec), lambda v: (v / norm).cast("float"))


def propagate(
    x: DataFrame, memberships: DataFrame, routes: DataFrame, *, dim: int, num_blocks: int, reflexive: bool
) -> DataFrame:
    """``x``: (id, vec) -> the next iteration's (id, vec), lazily."""
    routed = routes.join(x, "id").select("block", "id", "pre", "post", "vec")
    # Distinct column names on the two cogroup sides (both descend from the entity table).
    members = memberships.select(
        block_of("h", num_blocks).alias("block"), "h", "side", F.col("id").alias("member"), "weight"
    )

    def step(left: pa.Table, right: pa.Table) -> pa.Table:
        return multiply_block(left, right, dim=dim, reflexive=reflexive)

    partials = routed.groupBy("block").cogroup(members.groupBy("block")).applyInArrow(step, PARTIAL_SCHEMA)
    summed = partials.groupBy("id").agg(F.vector_sum("vec").alias("vec"))
    return summed.select("id", l2_normalize("vec").alias("vec"))
