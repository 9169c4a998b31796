"""'People like you': the customers whose sketches are closest (``emde similar-customers``).

Similarity is the cosine of two sketches after L2-normalising each partitioning's block, averaged
over the D blocks -- in [0, 1], 1 for customers whose decayed item mixes fall into the same buckets
in the same proportions. Every query is compared with every customer (exact, distributed by
:mod:`spark_cleora.emde.score`): the cost is queries x customers x nonzeros, so for large tables pass
the customers you need neighbours for (``queries``).
"""

from __future__ import annotations

import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import ConfigError
from ..runtime.session import step
from .config import SimilarCustomersConfig
from .score import Kernel, top_k
from .sketch import read_sketches
from .store import read_meta, write_output
from ..storage.readers import read_table, require_columns


def similar_customers(sketches: DataFrame, *, width: int, n_codes: int, k: int = 10,
                      queries: DataFrame | None = None, batch_size: int = 1024,
                      chunk_size: int = 20_000) -> DataFrame:
    """The ``k`` most similar other customers of every customer (or of those in ``queries``).

    Parameters
    ----------
    sketches
        ``customer``, ``idx``, ``val`` sketch rows.
    width, n_codes
        The coder's W and D (block layout of the sketches).
    queries
        Optional ``customer`` column: find neighbours for these customers only.

    Returns
    -------
    DataFrame
        ``customer``, ``customers`` (array<string>, most similar first), ``scores`` (array<float>).
    """
    cands = sketches.select(F.col("customer").alias("id"), "idx", "val", F.lit(0.0).alias("prior"))
    q = sketches
    if queries is not None:
        wanted = queries.select(F.col("customer").cast("string").alias("customer")).dropna().distinct()
        q = q.join(wanted, "customer")
    q = q.select(F.col("customer").alias("id"), "idx", "val", F.array(F.col("customer")).alias("exclude"))
    kernel = Kernel(length=width * n_codes, width=width, query="l2", candidate="l2", scale=1.0 / n_codes)
    out = top_k(q, cands, kernel=kernel, k=k, batch_size=batch_size, chunk_size=chunk_size)
    return out.select(F.col("id").alias("customer"), F.col("items").alias("customers"), "scores")


def run_similar_customers(spark: SparkSession, cfg: SimilarCustomersConfig) -> dict[str, Any]:
    """The ``emde similar-customers`` job; returns its manifest."""
    t0 = time.perf_counter()
    if not cfg.sketches or not cfg.output:
        raise ConfigError("--sketches DIR and --output DIR are required")
    sk, meta = read_sketches(spark, cfg.sketches)
    if cfg.coder:
        coder_id = read_meta(spark, cfg.coder, "coder")["coder_id"]
        if coder_id != meta["coder_id"]:
            raise ConfigError(f"sketches were built with coder {meta['coder_id']}, not {coder_id}")
    queries = None
    if cfg.customers:
        queries = spark.createDataFrame([(c,) for c in cfg.customers], "customer string")
    elif cfg.queries:
        queries = read_table(spark, [cfg.queries])
        require_columns(queries, ["customer"], f"queries {cfg.queries!r}")
    out = similar_customers(sk, width=meta["width"], n_codes=meta["n_codes"], k=cfg.k, queries=queries,
                            batch_size=cfg.batch_size, chunk_size=cfg.chunk_size)

    def write(staging: str) -> dict[str, Any]:
        with step(spark, "spark_cleora emde similar-customers"):
            out.write.parquet(staging)
            n = spark.read.parquet(staging).count()
        missing = {"customers_not_found": len(set(cfg.customers)) - n} if cfg.customers else {}
        return {"kind": "similar_customers", "coder_id": meta["coder_id"], "sketches": cfg.sketches,
                "config": cfg.to_dict(), "customers": n, **missing}

    manifest = write_output(spark, cfg.output, write)
    manifest["seconds_total"] = round(time.perf_counter() - t0, 3)
    return manifest
