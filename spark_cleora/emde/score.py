"""Distributed top-k scoring of sparse query vectors against sparse candidate rows.

Every top-k step (EMDE recommendations, look-alike customers, and the item-kNN baseline) is one
kernel: ``score(query, cand) = scale * <f(query) - shift, g(cand)> + prior(cand)``, with per-block
transforms ``f``/``g`` (a block is one partitioning's ``W`` buckets). Exact top-k over all
candidates, without any query x candidate matrix outside one task:

* queries are grouped into batches of ``batch_size`` rows (one row per batch) and candidates into
  chunks of ``chunk_size`` rows sorted by id;
* the two are paired with a shuffle-replicated nested loop (Cartesian product), so each task scores
  one batch against one chunk in numpy (a sparse x dense product of ``batch x chunk`` scores, in
  slices of 256 queries) and keeps the k best per query;
* with several chunks, the per-chunk top-k lists are merged by a ``groupBy`` on the query.

Cost: ``queries x candidates x nonzeros per candidate`` multiply-adds -- unavoidable for exact
scoring of a whole catalogue -- plus one copy of each chunk per query batch. That is the right
shape for catalogues up to ~10^6 items (restrict larger ones with a candidate list). The
alternative, joining sketches to item codes on bucket id, multiplies rows by the bucket occupancy and
still ends up touching most (customer, item) pairs, as Spark rows instead of numpy.
Ties are broken by candidate id, so results do not depend on the partitioning.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from scipy import sparse

from ..errors import BadInputError, ConfigError

TOPK_SCHEMA = "id string, items array<string>, scores array<float>"
TRANSFORMS = ("identity", "log_l1", "l2")
_SLICE = 256  # queries scored at once: a _SLICE x chunk float64 block


@dataclass(frozen=True)
class Kernel:
    """How query and candidate vectors become scores (see the module docstring).

    Parameters
    ----------
    length
        Vectors are sparse over ``[0, length)``.
    width
        Block size of the per-block transforms (``W``); 0 when no block transform is used.
    query, candidate
        ``identity``; ``log_l1``: ``log(eps + x / sum(block))`` (query only); ``l2``: ``x / |block|``.
    scale, eps
        Constants of the score.
    shift
        Optional dense ``(length,)`` vector subtracted from the transformed query.
    exp
        Report ``exp(score)`` (ranking is unchanged).
    """

    length: int
    width: int = 0
    query: str = "identity"
    candidate: str = "identity"
    scale: float = 1.0
    eps: float = 1e-6
    shift: np.ndarray | None = field(default=None, repr=False, compare=False)
    exp: bool = False

    def __post_init__(self) -> None:
        if self.query not in TRANSFORMS or self.candidate not in ("identity", "l2"):
            raise ConfigError(f"unknown kernel transforms {self.query!r}/{self.candidate!r}")
        if (self.query != "identity" or self.candidate != "identity") and (
                self.width < 1 or self.length % self.width):
            raise ConfigError(f"block transforms need a width dividing the length ({self.width}, {self.length})")

    def transform_queries(self, q: np.ndarray) -> np.ndarray:
        """Dense ``(n, length)`` queries -> transformed (float64)."""
        if self.query != "identity":
            blocks = q.reshape(len(q), -1, self.width)
            if self.query == "log_l1":
                tot = blocks.sum(-1, keepdims=True)
                blocks = np.log(self.eps + np.divide(blocks, tot, out=np.zeros_like(blocks), where=tot > 0))
            else:
                norm = np.sqrt((blocks * blocks).sum(-1, keepdims=True))
                blocks = np.divide(blocks, norm, out=np.zeros_like(blocks), where=norm > 0)
            q = blocks.reshape(len(q), -1)
        if self.shift is not None:
            q = q - self.shift
        return q

    def transform_candidates(self, rows: sparse.csr_matrix) -> sparse.csr_matrix:
        """L2-normalise each candidate's blocks (``candidate='l2'``); CSR rows have ascending ids."""
        if self.candidate == "identity" or rows.nnz == 0:
            return rows
        row_of = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
        key = row_of.astype(np.int64) * (self.length // self.width) + rows.indices // self.width
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        norms = np.sqrt(np.add.reduceat(rows.data.astype(np.float64) ** 2, starts))
        seg_len = np.diff(np.r_[starts, len(key)])
        scale = np.repeat(np.where(norms > 0, 1.0 / np.where(norms > 0, norms, 1.0), 0.0), seg_len)
        return sparse.csr_matrix((rows.data * scale, rows.indices, rows.indptr), shape=rows.shape)


def _csr(idx: pa.Array, val: pa.Array, length: int) -> sparse.csr_matrix:
    """Arrow ``list<int>`` / ``list<float>`` columns -> CSR ``(rows, length)``."""
    n = len(idx)
    if n == 0:
        return sparse.csr_matrix((0, length))
    offsets = np.asarray(idx.offsets, dtype=np.int64)
    indptr = offsets - offsets[0]
    flat_idx = idx.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    flat_val = val.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    if len(flat_idx) != len(flat_val):
        raise BadInputError("sparse vectors: idx and val arrays differ in length")
    if len(flat_idx) and (flat_idx.min() < 0 or flat_idx.max() >= length):
        raise BadInputError(f"sparse vectors have ids outside [0, {length}) -- built with another coder?")
    return sparse.csr_matrix((flat_val, flat_idx, indptr), shape=(n, length))


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best finite scores, best first, ties by position (= candidate id order)."""
    n = len(scores)
    if n > k:
        thr = np.partition(scores, n - k)[n - k]
        cand = np.flatnonzero(scores >= thr)
    else:
        cand = np.arange(n)
    order = cand[np.lexsort((cand, -scores[cand]))][:k]
    return order[np.isfinite(scores[order])]


def _score_pair(qs: pa.StructArray, cs: pa.StructArray, kernel: Kernel, k: int):
    """Top-k of one query batch against one candidate chunk: yields (id, items, scores) per query."""
    cids = cs.field("id").to_pylist()
    cand = kernel.transform_candidates(_csr(cs.field("idx"), cs.field("val"), kernel.length))
    # dense candidates (embeddings): a BLAS product beats the sparse one
    dense = cand.toarray() if cand.nnz > 0.3 * cand.shape[0] * cand.shape[1] else None
    prior = cs.field("prior").to_numpy(zero_copy_only=False).astype(np.float64)
    prior = np.where(np.isnan(prior), -np.inf, prior)
    qids = qs.field("id").to_pylist()
    qcsr = _csr(qs.field("idx"), qs.field("val"), kernel.length)
    excl = qs.field("exclude").to_pylist() if "exclude" in [f.name for f in qs.type] else None
    pos = {c: i for i, c in enumerate(cids)} if excl and any(excl) else None
    for lo in range(0, len(qids), _SLICE):
        hi = min(lo + _SLICE, len(qids))
        q = kernel.transform_queries(qcsr[lo:hi].toarray())
        raw = q @ dense.T if dense is not None else np.asarray(cand @ q.T).T
        block = raw * kernel.scale + prior  # (queries, candidates)
        block = block.astype(np.float32)
        for r in range(hi - lo):
            s = block[r]
            if pos is not None and excl[lo + r]:  # excluded candidates: -inf, in place
                s[[pos[x] for x in excl[lo + r] if x in pos]] = -np.inf
            top = top_indices(s, k)
            vals = s[top]
            if kernel.exp:
                vals = np.exp(vals.astype(np.float64)).astype(np.float32)
            yield qids[lo + r], [cids[i] for i in top], vals.tolist()


def _partitions(n_rows: int, per_row: int, spark) -> int:
    try:
        par = int(spark.conf.get("spark.sql.shuffle.partitions"))
    except Exception:
        par = 8
    return max(1, min(max(math.ceil(n_rows / per_row), par), n_rows))


def top_k(queries: DataFrame, candidates: DataFrame, *, kernel: Kernel, k: int, batch_size: int = 1024,
          chunk_size: int = 20_000, n_queries: int | None = None, n_candidates: int | None = None) -> DataFrame:
    """The ``k`` best candidates for every query.

    Parameters
    ----------
    queries
        ``id`` string, ``idx`` array<int>, ``val`` array<float> (a sparse vector), optional
        ``exclude`` array<string> (candidate ids never returned for this query).
    candidates
        ``id`` string (unique), ``idx`` array<int>, ``val`` array<float>, ``prior`` double.
    kernel
        The score (see :class:`Kernel`).
    n_queries, n_candidates
        Row counts if known (otherwise counted: two small jobs).

    Returns
    -------
    DataFrame
        ``id``, ``items`` (array<string>, best first), ``scores`` (array<float>); a query with no
        candidate left gets empty arrays.
    """
    spark = queries.sparkSession
    nq = queries.count() if n_queries is None else n_queries
    nc = candidates.count() if n_candidates is None else n_candidates
    if nq == 0 or nc == 0:
        return spark.createDataFrame([], TOPK_SCHEMA)
    n_batches = _partitions(nq, batch_size, spark)
    n_chunks = max(1, math.ceil(nc / chunk_size))
    q_fields = ["id", "idx", "val"] + (["exclude"] if "exclude" in queries.columns else [])
    qb = (queries.withColumn("b", F.pmod(F.xxhash64("id"), F.lit(n_batches)))
          .repartition(n_batches, "b")
          .groupBy("b").agg(F.collect_list(F.struct(*q_fields)).alias("q")))
    cc = (candidates.withColumn("c", F.pmod(F.xxhash64("id"), F.lit(n_chunks)))
          .repartition(n_chunks, "c")
          .groupBy("c").agg(F.sort_array(F.collect_list(F.struct("id", "idx", "val", "prior"))).alias("cands")))

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            ids, items, scores, chunk = [], [], [], []
            for r in range(b.num_rows):
                qs = b.column("q")[r].values
                cs = b.column("cands")[r].values
                for qid, its, sc in _score_pair(qs, cs, kernel, k):
                    ids.append(qid)
                    items.append(its)
                    scores.append(sc)
                    chunk.append(b.column("c")[r].as_py())
            yield pa.RecordBatch.from_pydict(
                {"id": ids, "c": chunk, "items": items, "scores": scores},
                schema=pa.schema([("id", pa.string()), ("c", pa.int64()), ("items", pa.list_(pa.string())),
                                  ("scores", pa.list_(pa.float32()))]))

    # Cartesian product: every task pairs one partition of batches with one of chunks, so a task
    # never holds more than its own chunk.
    pairs = qb.hint("shuffle_replicate_nl").crossJoin(cc)
    scored = pairs.mapInArrow(score, "id string, c long, items array<string>, scores array<float>")
    if n_chunks == 1:
        return scored.select("id", "items", "scores")
    # explode_outer keeps queries whose every chunk came back empty (collect_list skips the nulls);
    # `scored` is used once, so the scoring runs once
    entry = F.when(F.col("e").isNotNull(), F.struct((-F.col("e.scores")).alias("neg"), F.col("e.items").alias("item")))
    merged = (scored.select("id", F.explode_outer(F.arrays_zip("items", "scores")).alias("e"))
              .groupBy("id")
              .agg(F.slice(F.sort_array(F.collect_list(entry)), 1, k).alias("top")))
    return merged.select("id", F.transform("top", lambda x: x["item"]).alias("items"),
                         F.transform("top", lambda x: -x["neg"]).alias("scores"))


def bucket_mass(items: DataFrame, *, length: int) -> np.ndarray:
    """Popularity mass per bucket, ``(length,)``, from ``item``, ``codes``, ``w`` rows.

    Every item lies in exactly one bucket of each partitioning, so each block sums to the total.
    Only this vector reaches the driver.
    """
    out = np.zeros(length)
    for r in items.select(F.explode("codes").alias("b"), "w").groupBy("b").agg(F.sum("w").alias("w")).collect():
        out[r["b"]] = r["w"]
    return out
