"""Embedding-based next-item methods for ``evaluate session``: ``CLEORA-KNN`` and ``EMDE``.

Both use the run's shared Cleora embeddings of the training sessions (``MethodContext.embedding``);
see :mod:`spark_cleora.evaluate.session_methods` for the interface and the parameters.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..emde.coder import fit_coder, item_codes
from ..emde.recommend import recommend
from ..emde.score import Kernel, top_k
from ..emde.sketch import build_sketches
from .session_methods import MethodContext, last_items, register_method


def _explode_lists(recs: DataFrame, id_col: str) -> DataFrame:
    """``id_col``, ``items``, ``scores`` lists -> one ``item``, ``score`` row each."""
    z = recs.select(id_col, F.explode(F.arrays_zip("items", "scores")).alias("e"))
    return z.select(id_col, F.col("e.items").alias("item"), F.col("e.scores").cast("double").alias("score"))


@register_method("CLEORA-KNN", params={"from": "last item", "similarity": "cosine of Cleora embeddings"},
                 needs_embedding=True)
def cleora_knn(ctx: MethodContext) -> DataFrame:
    emb = ctx.embedding()
    dim = len(emb.select("embedding").first()["embedding"])
    last = last_items(ctx.prefixes)
    # one query per distinct last item, not per prefix
    queries = last.select(F.col("last").alias("entity")).distinct().join(emb, "entity") \
        .select(F.col("entity").alias("id"), F.sequence(F.lit(0), F.lit(dim - 1)).alias("idx"),
                F.col("embedding").alias("val"))
    cands = emb.select(F.col("entity").alias("id"), F.sequence(F.lit(0), F.lit(dim - 1)).alias("idx"),
                       F.col("embedding").alias("val"), F.lit(0.0).alias("prior"))
    lists = _explode_lists(top_k(queries, cands, kernel=Kernel(length=dim), k=ctx.k), "id")
    return last.join(lists.withColumnRenamed("id", "last"), "last").select("prefix_id", "item", "score")


@register_method("EMDE", params={"depth": "10 (option emde_depth)", "bits": "7 (option emde_bits)",
                                 "coder_seed": "0 (option emde_seed)",
                                 "half_life": "600 s, decay to the prefix's last event (option emde_half_life)",
                                 "decoder": "popularity (training popularity)",
                                 "sketch_weight": "0.5 (option emde_sketch_weight)"},
                 needs_embedding=True)
def emde(ctx: MethodContext) -> DataFrame:
    depth = ctx.option("emde_depth", 10, int)
    bits = ctx.option("emde_bits", 7, int)
    seed = ctx.option("emde_seed", 0, int)
    half_life = ctx.option("emde_half_life", 600.0, float)
    weight = ctx.option("emde_sketch_weight", 0.5, float)
    spark, wd = ctx.spark, ctx.work_dir
    coder = fit_coder([ctx.embedding()], names=["train_embeddings"], depth=depth, bits=bits, seed=seed)
    item_codes(coder, [ctx.embedding()]).write.mode("overwrite").parquet(f"{wd}/codes")
    codes = spark.read.parquet(f"{wd}/codes")
    events = ctx.prefixes.select("prefix_id", F.explode(F.arrays_zip("items", "times")).alias("e")) \
        .select(F.col("prefix_id").alias("customer"), F.col("e.items").alias("item"), F.col("e.times").alias("t"))
    sk = build_sketches(events, codes, customer="customer", item="item", timestamp="t",
                        half_life=half_life, decay_anchor="last-event")
    sk.sketches.write.mode("overwrite").parquet(f"{wd}/sketches")
    sketches = spark.read.parquet(f"{wd}/sketches")
    popularity = ctx.train.groupBy("item").agg(F.count(F.lit(1)).cast("double").alias("weight"))
    recs, _ = recommend(sketches, codes, width=coder.width, n_codes=coder.n_codes, k=ctx.k, scoring="popularity",
                        sketch_weight=weight, popularity=popularity, n_customers=sketches.count())
    return _explode_lists(recs, "customer").withColumnRenamed("customer", "prefix_id")
