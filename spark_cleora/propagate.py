"""One Cleora iteration: X <- rownorm(M X), as a join-and-aggregate on Spark.

Block routing (as Spark's ALS does): hyperedges are hashed into blocks; each entity vector is sent
once to every block that has one of its hyperedges (not once per membership). A Python worker then
multiplies a whole block with scipy sparse matrices:

    S_A = A X,  S_B = B X               per-hyperedge sums of member vectors (A, B: h x e counts)
    Y   = Aᵀ (w ⊙ S_B) + Bᵀ (w ⊙ S_A)    each member gets w_h times the other side's sum

and emits one partial vector per (entity, block). A second grouped step sums the partials of each
entity (entities hashed into buckets, one numpy ``reduceat`` per bucket) and L2-normalises the rows.
Vectors travel packed (see :mod:`spark_cleora.vectors`); all arithmetic is float64, stored float32.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy import sparse

from .vectors import PACKED, pack, to_list_array, unpack

VECTOR_SCHEMA = f"id long, vec {PACKED}"
NORM_EPS = 1e-10  # pycleora 3.x: x / max(||x||, 1e-10); an all-zero row stays zero


FAIL_SWITCH = "SPARK_CLEORA_TEST_FAIL_FIRST_ATTEMPT"


def _maybe_inject_failure(where: str) -> None:
    """Test-only switch: with ``SPARK_CLEORA_TEST_FAIL_FIRST_ATTEMPT=1`` in the workers' environment, the
    first attempt of every even-numbered task fails, so tests can show that retries change nothing."""
    if os.environ.get(FAIL_SWITCH) != "1":
        return
    from pyspark import TaskContext

    ctx = TaskContext.get()
    if ctx is not None and ctx.attemptNumber() == 0 and ctx.partitionId() % 2 == 0:
        raise RuntimeError(f"injected failure in {where} (partition {ctx.partitionId()}, {FAIL_SWITCH}=1)")


def _empty(dim: int) -> pa.Table:
    return pa.table({"id": pa.array([], pa.int64()), "vec": pack(np.zeros((0, dim), dtype=np.float32))})


def multiply_block(routed: pa.Table, members: pa.Table, *, dim: int, reflexive: bool) -> pa.Table:
    """Multiply one block: routed vectors ``(id, pre, post, vec)`` x memberships ``(h, side, member, weight)``."""
    if routed.num_rows == 0 or members.num_rows == 0:
        return _empty(dim)
    ids = routed.column("id").to_numpy()
    x = unpack(routed.column("vec"), dim).astype(np.float64)
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
    return pa.table({"id": pa.array(ids, pa.int64()), "vec": pack(y)})


def sum_and_normalize(partials: pa.Table, *, dim: int) -> pa.Table:
    """Sum the partial vectors of each entity, then divide each row by max(‖row‖, 1e-10)."""
    if partials.num_rows == 0:
        return _empty(dim)
    ids = partials.column("id").to_numpy()
    vecs = unpack(partials.column("vec"), dim)
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    total = np.add.reduceat(vecs[order].astype(np.float64), starts, axis=0)
    norms = np.sqrt(np.einsum("ij,ij->i", total, total))
    total /= np.maximum(norms, NORM_EPS)[:, None]
    return pa.table({"id": pa.array(ids[starts], pa.int64()), "vec": pack(total)})


def reduce_key(num_buckets: int):
    return F.pmod(F.xxhash64(F.col("id")), F.lit(num_buckets)).cast("int")


def propagate(
    x: DataFrame,
    memberships: DataFrame,
    routes: DataFrame,
    *,
    dim: int,
    reflexive: bool,
    num_buckets: int,
) -> DataFrame:
    """``x``: (id, vec) -> the next iteration's (id, vec), lazily.

    ``memberships``: (block, h, side, id, weight); ``routes``: (id, block, pre, post).
    """
    routed = routes.join(x, "id").select("block", "id", "pre", "post", "vec")
    # Distinct column names on the two cogroup sides (both descend from the entity table).
    members = memberships.select("block", "h", "side", F.col("id").alias("member"), "weight")

    def step(left: pa.Table, right: pa.Table) -> pa.Table:
        _maybe_inject_failure("multiply")
        return multiply_block(left, right, dim=dim, reflexive=reflexive)

    def reduce(table: pa.Table) -> pa.Table:
        _maybe_inject_failure("reduce")
        return sum_and_normalize(table, dim=dim)

    partials = routed.groupBy("block").cogroup(members.groupBy("block")).applyInArrow(step, VECTOR_SCHEMA)
    bucketed = partials.withColumn("bucket", reduce_key(num_buckets))
    return bucketed.groupBy("bucket").applyInArrow(lambda t: reduce(t.drop_columns(["bucket"])), VECTOR_SCHEMA)


def unpacked(x: DataFrame, *, dim: int) -> DataFrame:
    """(id, packed vec) -> (id, vec array<float>) for output."""

    def convert(batches):
        for b in batches:
            vec = unpack(b.column("vec"), dim)
            yield pa.RecordBatch.from_arrays([b.column("id"), to_list_array(vec)], names=["id", "vec"])

    return x.mapInArrow(convert, "id long, vec array<float>")
