"""Top-k items per customer from its sketch (``emde recommend``).

Both decoders read the customer sketch L1-normalised per partitioning, ``q`` (each block a
distribution over its W buckets), at the D buckets ``b_j(i)`` of every candidate item i:

* ``geometric`` -- the official ``multi_query``: ``exp(mean_j log(eps + q[b_j(i)]))``;
* ``popularity`` -- the paper's session-rec ``PopularityDecoder``, evidence per partitioning averaged
  and weighted: ``log p(i) + w * mean_j [log(eps + q[b_j(i)]) - log P[b_j(i)]]``, where ``p`` is the
  item's share of the sketched events and ``P[b]`` the share of bucket b. ``w = D`` is the paper's
  plain sum; on MovieLens-100k (validation split) ``w = 0.5`` ranked best (see the README).

Scoring is exact over all candidates and distributed (:mod:`spark_cleora.emde.score`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import ConfigError
from ..runtime.session import step
from .coder import read_codes
from .config import RecommendConfig
from .score import Kernel, bucket_mass, top_k
from .sketch import read_items, read_sketches
from .store import read_candidates, read_meta, write_output
from ..storage.readers import read_table, require_columns

log = logging.getLogger(__name__)


def recommend(
    sketches: DataFrame | None,
    codes: DataFrame,
    *,
    width: int | None = None,
    n_codes: int | None = None,
    k: int = 10,
    scoring: str | None = None,
    sketch_weight: float = 0.5,
    eps: float = 1e-6,
    popularity: DataFrame | None = None,
    popularity_smoothing: float = 0.0,
    seen: DataFrame | None = None,
    candidates: DataFrame | None = None,
    batch_size: int = 1024,
    chunk_size: int = 20_000,
    n_customers: int | None = None,
    model: Any = None,
    events: DataFrame | None = None,
    columns: dict[str, str | None] | None = None,
    as_of: float | None = None,
) -> tuple[DataFrame, dict[str, Any]]:
    """Recommend ``k`` items to every customer in ``sketches``.

    Parameters
    ----------
    sketches
        ``customer``, ``idx``, ``val`` (from :func:`spark_cleora.emde.sketch.build_sketches`).
    codes
        ``item``, ``codes`` of the same coder; ``width`` (W) and ``n_codes`` (D) are the coder's.
    scoring, sketch_weight, eps, popularity_smoothing
        ``popularity`` (default) or ``geometric``; see :class:`spark_cleora.emde.config.RecommendConfig`.
    popularity
        ``item``, ``weight``: item popularity (required by ``popularity`` scoring), e.g.
        :func:`spark_cleora.emde.sketch.read_items`.
    seen
        ``customer``, ``item`` pairs never to recommend (exact exclusion).
    candidates
        ``item``: score only these items (default: every coded item).
    n_customers
        The number of sketch rows, if known (saves counting them).
    model, events, columns, as_of
        A trained model (:func:`spark_cleora.emde.model.load_model`): recommend from its predicted
        sketch instead (``sketches`` unused), with inputs built from ``events`` up to ``as_of``;
        ``columns``: ``customer``, ``item``, ``timestamp`` (and optional ``weight``) column names;
        ``scoring``: ``popularity`` (default, weight 2) or ``log-prob``
        (:func:`spark_cleora.emde.model_recommend.recommend_with_model`).

    Returns
    -------
    (DataFrame, dict)
        ``customer``, ``items`` (array<string>, best first), ``scores`` (array<float>); and counts.
    """
    if model is not None:
        from .model_recommend import recommend_with_model

        if events is None or not columns:
            raise ConfigError("recommend(model=...) needs events and columns (customer, item, timestamp)")
        return recommend_with_model(
            model, events, codes, customer=columns["customer"] or "", item=columns["item"] or "",
            timestamp=columns["timestamp"] or "", weight=columns.get("weight"), as_of=as_of, k=k,
            scoring=scoring or "popularity", seen=seen, candidates=candidates,
            batch_size=batch_size, chunk_size=chunk_size)
    if sketches is None or width is None or n_codes is None:
        raise ConfigError("recommend needs sketches, width and n_codes (or a model)")
    scoring = scoring or "popularity"
    length = width * n_codes
    report: dict[str, Any] = {}
    cands = codes.select("item", "codes")
    if candidates is not None:
        wanted = candidates.select(F.col("item").cast("string").alias("item")).dropna().distinct()
        cands = cands.join(wanted, "item")
        report["candidates_without_codes"] = wanted.join(codes.select("item"), "item", "left_anti").count()
    if scoring == "popularity":
        if popularity is None:
            raise ConfigError("popularity scoring needs item popularity (the sketches' _items table)")
        pop = codes.select("item", "codes").join(popularity.select("item", "weight"), "item", "left") \
            .select("item", "codes", (F.coalesce("weight", F.lit(0.0)) + F.lit(float(popularity_smoothing))).alias("w"))
        mass = bucket_mass(pop.filter(F.col("w") > 0), length=length)
        total = mass.sum() / n_codes
        if not total > 0:
            raise ConfigError("no coded item has any popularity: nothing to score with --scoring popularity")
        # log P[b] (0 for empty buckets: no candidate with popularity lies there)
        shift = np.log(np.where(mass > 0, mass / total, 1.0))
        cands = cands.join(pop.select("item", "w"), "item", "left").select(
            "item", "codes", F.when(F.col("w") > 0, F.log(F.col("w") / F.lit(total))).alias("prior"))
        kernel = Kernel(length=length, width=width, query="log_l1", scale=sketch_weight / n_codes, eps=eps, shift=shift)
    elif scoring == "geometric":
        cands = cands.select("item", "codes", F.lit(0.0).alias("prior"))
        kernel = Kernel(length=length, width=width, query="log_l1", scale=1.0 / n_codes, eps=eps, exp=True)
    else:
        raise ConfigError(f"unknown scoring {scoring!r}")
    r = cands.agg(F.count(F.lit(1)).alias("n"), F.count("prior").alias("scored")).collect()[0]
    n_cand = int(r["scored"])
    report["candidates"] = n_cand
    if scoring == "popularity":
        report["candidates_without_popularity"] = int(r["n"]) - n_cand
    cands = cands.filter(F.col("prior").isNotNull())
    cand_rows = cands.select(F.col("item").alias("id"), F.col("codes").alias("idx"),
                             F.array_repeat(F.lit(1.0).cast("float"), F.size("codes")).alias("val"), "prior")
    queries = sketches.select(F.col("customer").alias("id"), "idx", "val")
    if seen is not None:
        excl = seen.select(F.col("customer").cast("string").alias("id"), F.col("item").cast("string").alias("item")) \
            .dropna().groupBy("id").agg(F.collect_set("item").alias("exclude"))
        queries = queries.join(excl, "id", "left")
    recs = top_k(queries, cand_rows, kernel=kernel, k=k, batch_size=batch_size, chunk_size=chunk_size,
                 n_queries=n_customers, n_candidates=n_cand)
    return recs.withColumnRenamed("id", "customer"), report


def run_recommend(spark: SparkSession, cfg: RecommendConfig) -> dict[str, Any]:
    """The ``emde recommend`` job; returns its manifest."""
    if cfg.model:
        from .model_recommend import run_model_recommend

        return run_model_recommend(spark, cfg)
    t0 = time.perf_counter()
    if not cfg.coder or not cfg.sketches or not cfg.output:
        raise ConfigError("--coder CODER, --sketches DIR and --output DIR are required")
    coder_meta = read_meta(spark, cfg.coder, "coder")
    sk, sk_meta = read_sketches(spark, cfg.sketches)
    if sk_meta["coder_id"] != coder_meta["coder_id"]:
        raise ConfigError(f"sketches {cfg.sketches!r} were built with coder {sk_meta['coder_id']}, but "
                          f"{cfg.coder!r} is coder {coder_meta['coder_id']}: codes differ, refusing to mix them")
    seen = None
    if cfg.exclude_seen:
        events = read_table(spark, cfg.events, cfg.events_format)
        require_columns(events, [cfg.customer, cfg.item], "events")
        seen = events.select(F.col(cfg.customer or "").alias("customer"), F.col(cfg.item or "").alias("item"))
    recs, report = recommend(
        sk, read_codes(spark, cfg.coder), width=coder_meta["width"], n_codes=coder_meta["n_codes"], k=cfg.k,
        scoring=cfg.scoring, sketch_weight=cfg.sketch_weight, eps=cfg.eps,
        popularity=read_items(spark, cfg.sketches) if cfg.scoring == "popularity" else None,
        popularity_smoothing=cfg.popularity_smoothing, seen=seen,
        candidates=read_candidates(spark, cfg.candidates) if cfg.candidates else None,
        batch_size=cfg.batch_size, chunk_size=cfg.chunk_size, n_customers=sk_meta.get("customers"))

    def write(staging: str) -> dict[str, Any]:
        with step(spark, "spark_cleora emde recommend: score and write", log):
            recs.write.parquet(staging)
            r = spark.read.parquet(staging).agg(F.count(F.lit(1)).alias("n"),
                                                F.sum((F.size("items") < cfg.k).cast("long")).alias("short")).collect()[0]
        return {"kind": "recommendations", "coder_id": coder_meta["coder_id"], "coder": cfg.coder,
                "sketches": cfg.sketches, "config": cfg.to_dict(), **report,
                "customers": int(r["n"]), "customers_with_fewer_than_k": int(r["short"] or 0)}

    manifest = write_output(spark, cfg.output, write)
    manifest["seconds_total"] = round(time.perf_counter() - t0, 3)
    return manifest
