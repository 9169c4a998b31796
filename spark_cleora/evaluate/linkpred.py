"""``spark-cleora evaluate linkpred``: the Cleora paper's link-prediction protocol, distributed.

Protocol (the authors' ``example_link_prediction`` notebook in https://github.com/BaseModelAI/cleora; docs/quality.md):

1. The (undirected, de-duplicated, loop-free) edges are split 80/20 at random with a seed. Each edge goes
   to the test side when ``xxhash64(seed, src, dst) mod 10⁶ < 0.2·10⁶``: reproducible, and independent of
   partitioning (the split is close to, not exactly, 20%).
2. Only the training edges are embedded (clique or star expansion, any ``embed`` options).
3. Candidates: the 10,000 most frequent training nodes (most training edges; ties by id).
4. Test edges with both ends in the training graph are sampled (1,000 as in the paper; ``--sample 0``:
   all of them; the sample is the lowest ``xxhash64(seed + 1, src, dst)`` values). For each sampled
   ``(a, b)`` the cosine ``cos(a, c)`` of every candidate ``c`` is compared with ``cos(a, b)``; ``a``
   itself, ``b`` and ``a``'s training neighbours are masked. ``rank = 1 + #{unmasked c : cos(a, c) >
   cos(a, b)}`` (``b`` need not be a candidate). MRR = mean of 1/rank, HitRate@10 = share of rank <= 10.

Distribution: the test edges (with their ``a``/``b`` vectors and ``a``'s masked candidates, joined on
the cluster) are scored in ``mapInArrow`` against the candidate matrix, which travels in the function's
closure (10,000 x 256 float32 = 10 MB). Only the candidates and the final sums reach the driver.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import BadInputError
from ..runtime.session import job_description
from ..engine.vectors import from_list_array
from .graphs import add_edge_options, edge_source, embed_edges, embed_options, read_edges, write_report

log = logging.getLogger(__name__)

TEST_FRACTION = 0.2
CANDIDATES = 10_000
SAMPLE = 1_000  # the paper's notebook ranks 1,000 sampled test edges
_BUCKETS = 1_000_000
_CHUNK = 512  # test edges scored per matrix product (512 x 10k float32 = 20 MB)


def split_edges(edges: DataFrame, *, seed: int, test_fraction: float = TEST_FRACTION) -> tuple[DataFrame, DataFrame]:
    """(train, test): each edge is a test edge with probability ``test_fraction``, decided by a hash."""
    u = F.pmod(F.xxhash64(F.lit(seed), "src", "dst"), F.lit(_BUCKETS))
    is_test = u < F.lit(int(round(test_fraction * _BUCKETS)))
    return edges.filter(~is_test), edges.filter(is_test)


def top_candidates(train: DataFrame, *, k: int = CANDIDATES) -> DataFrame:
    """(node, degree) of the ``k`` nodes with most training edges (ties broken by id)."""
    ends = train.select(F.col("src").alias("node")).unionAll(train.select(F.col("dst").alias("node")))
    return ends.groupBy("node").agg(F.count(F.lit(1)).alias("degree")).orderBy(
        F.col("degree").desc(), "node").limit(k)


def sample_test_edges(test: DataFrame, emb: DataFrame, *, seed: int, n: int) -> tuple[DataFrame, int]:
    """Test edges whose both ends have an embedding; the ``n`` with the lowest hash (all when ``n`` <= 0)."""
    known = emb.select(F.col("entity").alias("node"))
    t = (test.join(known.withColumnRenamed("node", "src"), "src", "left_semi")
         .join(known.withColumnRenamed("node", "dst"), "dst", "left_semi"))
    eligible = t.count()
    if n > 0:
        t = t.withColumn("_o", F.xxhash64(F.lit(seed + 1), "src", "dst")).orderBy("_o", "src", "dst").limit(n)
        t = t.drop("_o")
    return t, eligible


def _normalised(m: np.ndarray) -> np.ndarray:
    m = m.astype(np.float32, copy=True)
    m /= np.maximum(np.linalg.norm(m, axis=1, keepdims=True), np.float32(1e-12))
    return m


def score_batches(batches: Iterable[pa.RecordBatch], *, names: list[str], cand: np.ndarray,
                  dim: int) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body: rows ``(a, b, va, vb, mask)`` -> ``(a, b, rank)``."""
    pos = {n: i for i, n in enumerate(names)}
    for batch in batches:
        a_names = batch.column("a").to_pylist()
        b_names = batch.column("b").to_pylist()
        va = _normalised(from_list_array(batch.column("va"), dim))
        vb = _normalised(from_list_array(batch.column("vb"), dim))
        masks = batch.column("mask").to_pylist()
        ranks = np.empty(len(a_names), dtype=np.int64)
        for lo in range(0, len(a_names), _CHUNK):
            hi = min(lo + _CHUNK, len(a_names))
            s = va[lo:hi] @ cand.T
            sb = np.einsum("ij,ij->i", va[lo:hi], vb[lo:hi])
            for j in range(lo, hi):
                for n in (masks[j] or ()):
                    s[j - lo, pos[n]] = -np.inf
                for n in (a_names[j], b_names[j]):
                    if n in pos:
                        s[j - lo, pos[n]] = -np.inf
            ranks[lo:hi] = 1 + (s > sb[:, None]).sum(axis=1)
        yield pa.RecordBatch.from_arrays([batch.column("a"), batch.column("b"), pa.array(ranks, pa.int64())],
                                         names=["a", "b", "rank"])


def rank_test_edges(emb: DataFrame, train: DataFrame, test: DataFrame, *, seed: int, sample: int = SAMPLE,
                    candidates: int = CANDIDATES) -> dict[str, Any]:
    """MRR and HitRate@10 of ``test`` edges ranked against the training graph's top candidates.

    ``emb``: (entity, embedding array<float>) of the training nodes (any embedding, e.g. pycleora's).
    """
    spark = emb.sparkSession
    with job_description(spark, "spark_cleora: link prediction candidates"):
        cands = top_candidates(train, k=candidates).join(emb.withColumnRenamed("entity", "node"), "node")
        rows = cands.orderBy(F.col("degree").desc(), "node").collect()  # k x dim: 10 MB at 10k x 256
    if not rows:
        raise BadInputError("no candidate has an embedding")
    names = [r["node"] for r in rows]
    dim = len(rows[0]["embedding"])
    cand = _normalised(np.array([r["embedding"] for r in rows], dtype=np.float32))
    sampled, eligible = sample_test_edges(test, emb, seed=seed, n=sample)
    cand_df = spark.createDataFrame([(n,) for n in names], "node string")
    both = train.select("src", "dst").unionAll(train.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    masks = (both.join(cand_df.withColumnRenamed("node", "dst"), "dst")  # a's neighbours among the candidates
             .groupBy(F.col("src").alias("a")).agg(F.collect_set("dst").alias("mask")))
    vec = emb.select(F.col("entity"), F.col("embedding"))
    rows_df = (sampled.select(F.col("src").alias("a"), F.col("dst").alias("b"))
               .join(vec.withColumnRenamed("entity", "a").withColumnRenamed("embedding", "va"), "a")
               .join(vec.withColumnRenamed("entity", "b").withColumnRenamed("embedding", "vb"), "b")
               .join(masks, "a", "left")
               .select("a", "b", "va", "vb", "mask"))
    with job_description(spark, "spark_cleora: link prediction ranking"):
        ranked = rows_df.mapInArrow(lambda it: score_batches(it, names=names, cand=cand, dim=dim),
                                    "a string, b string, rank long")
        agg = ranked.agg(F.count(F.lit(1)).alias("n"), F.avg(1.0 / F.col("rank")).alias("mrr"),
                         F.avg((F.col("rank") <= 10).cast("double")).alias("hr10"),
                         F.avg((F.col("rank") <= 1).cast("double")).alias("hr1"),
                         F.percentile_approx("rank", 0.5).alias("median_rank")).collect()[0]
    return {"mrr": float(agg["mrr"]), "hitrate@10": float(agg["hr10"]), "hitrate@1": float(agg["hr1"]),
            "median_rank": int(agg["median_rank"]), "test_edges_ranked": int(agg["n"]),
            "test_edges_with_known_nodes": eligible, "candidates": len(names)}


def run_linkpred(spark: SparkSession, edges: DataFrame, *, expansion: str, options: dict[str, Any],
                 seed: int = 0, sample: int = SAMPLE, candidates: int = CANDIDATES,
                 test_fraction: float = TEST_FRACTION) -> dict[str, Any]:
    """Split, embed the training edges, rank the sampled test edges; the report (without input counts)."""
    t0 = time.perf_counter()
    train, test = split_edges(edges, seed=seed, test_fraction=test_fraction)
    train = train.localCheckpoint(eager=True)
    test = test.localCheckpoint(eager=True)
    emb, embed_report = embed_edges(spark, train, expansion=expansion, options=options)
    emb = emb.localCheckpoint(eager=True)
    t_embed = time.perf_counter() - t0
    metrics = rank_test_edges(emb, train, test, seed=seed, sample=sample, candidates=candidates)
    return {
        "protocol": {"name": "cleora-linkpred", "test_fraction": test_fraction, "split_seed": seed,
                     "sample": sample, "candidates": candidates, "expansion": expansion,
                     "score": "cosine", "masked": "a, b and a's training neighbours"},
        "split": {"train_edges": train.count(), "test_edges": test.count()},
        "embedding": {k: v for k, v in embed_report["config"].items() if k in options or k in (
            "dim", "iterations", "markov", "init", "seed", "whiten", "residual", "multiscale", "columns")},
        "metrics": metrics,
        "seconds": {"embed": round(t_embed, 2), "total": round(time.perf_counter() - t0, 2)},
    }


def _run(ns: argparse.Namespace) -> int:
    from ..options import spark_from_args

    spark = spark_from_args(ns)
    edges, counts = read_edges(spark, edge_source(ns))
    edges = edges.localCheckpoint(eager=True)
    report = run_linkpred(spark, edges, expansion=ns.expansion, options=embed_options(ns), seed=ns.split_seed,
                          sample=ns.sample, candidates=ns.candidates, test_fraction=ns.test_fraction)
    report = {"evaluation": "linkpred", "edges": {"paths": list(ns.edges), **counts}, **report}
    write_report(ns.report, report)
    m = report["metrics"]
    print(f"linkpred: MRR {m['mrr']:.4f}  HitRate@10 {m['hitrate@10']:.4f}  "
          f"({m['test_edges_ranked']} test edges, {m['candidates']} candidates)"
          + (f"; report: {ns.report}" if ns.report else ""))
    return 0


def register(esub: argparse._SubParsersAction) -> None:
    from ..options import add_embedding_options, add_spark_options

    p = esub.add_parser(
        "linkpred", help="link prediction: MRR and HitRate@10 (the Cleora paper's protocol)",
        description=__doc__.split("\n\n", 1)[1].split("Distribution:")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_edge_options(p, required=True)
    g = p.add_argument_group("protocol")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the 80/20 split and the sample (default 0)")
    g.add_argument("--test-fraction", type=float, default=TEST_FRACTION, help="share of test edges (default 0.2)")
    g.add_argument("--sample", type=int, default=SAMPLE,
                   help=f"test edges to rank (default {SAMPLE}, as the paper; 0 = all)")
    g.add_argument("--candidates", type=int, default=CANDIDATES,
                   help=f"most frequent training nodes to rank against (default {CANDIDATES})")
    g.add_argument("--report", help="write the JSON report here (atomically)")
    add_embedding_options(p.add_argument_group("embedding (as `spark-cleora embed`)"))
    add_spark_options(p)
    p.set_defaults(handler=_run)
