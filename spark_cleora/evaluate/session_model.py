"""``EMDE-MODEL`` for ``evaluate session``: the trained EMDE model (needs ``spark-cleora[model]``).

The coder is fitted on the run's Cleora embedding, a second Cleora embedding per extra iteration
count (``model_iterations``) and the random source (``model_random_source``), the network is
trained on the training sessions (:func:`spark_cleora.emde.train.train_model`: every event after a
session's first is a target, its inputs are the session's earlier events; the newest 10 % of
training time is the validation split for early stopping), and each prefix is scored from the
predicted sketch (:func:`spark_cleora.emde.model_recommend.recommend_with_model`). Options
(``--option NAME=VALUE``) are listed in the method's parameters.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from ..emde.coder import fit_coder, item_codes, save_coder
from ..emde.config import RecommendConfig
from ..errors import ConfigError
from .session_embedding import _explode_lists
from .session_methods import MethodContext, register_method

# the scoring chosen on RSC15's validation split (docs/emde-model.md); `emde recommend --model`
# defaults to popularity, whose weight is shared with it
SCORING, SKETCH_WEIGHT = "log-prob", RecommendConfig.model_sketch_weight
ITERATIONS, RANDOM_SOURCE = "1", 1  # the extra sources chosen on the same split

PARAMS = {
    "depth": "10 (option emde_depth)", "bits": "7 (option emde_bits)", "coder_seed": "0 (option emde_seed)",
    "half_life": "600 s (option emde_half_life)", "short_term": "the last event (option model_recent 1)",
    "hidden": "1024 (option model_hidden)", "layers": "3 (option model_layers)",
    "epochs": "5, early stopping on the newest 10% of training time (options model_epochs, model_patience 2)",
    "batch_size": "256 (option model_batch_size)", "lr": "0.004 AdamW, step schedule x0.5 per epoch (model_lr)",
    "scoring": "log-prob: sum of the item's bucket log-probabilities (option model_scoring; popularity: "
               "log p(i) + (w/D) sum_j log(q_j/P_j), p and P from the training events, w = option "
               f"model_sketch_weight, {SKETCH_WEIGHT:g})",
    "processes": "TorchDistributor processes, 1 (option model_processes)", "seed": "0 (option model_seed)",
    "sources": f"the run's Cleora embedding, one more Cleora source per iteration count of option "
               f"model_iterations ({ITERATIONS}; the paper coded several; empty for none) and the random source "
               f"(option model_random_source, {RANDOM_SOURCE}; 0 for none): chosen on RSC15's validation split",
}


@register_method("EMDE-MODEL", params=PARAMS, needs_embedding=True)
def emde_model(ctx: MethodContext) -> DataFrame:
    from ..emde.model import load_model, require_torch
    from ..emde.model_recommend import recommend_with_model
    from ..emde.train import train_model

    require_torch()
    spark, wd = ctx.spark, ctx.work_dir
    sources, names = [ctx.embedding()], ["train_embeddings"]
    for n in _iterations(ctx.option("model_iterations", ITERATIONS)):
        sources.append(ctx.embedding(iterations=n))
        names.append(f"train_embeddings_{n}_iterations")
    coder = fit_coder(sources, names=names, depth=ctx.option("emde_depth", 10, int),
                      bits=ctx.option("emde_bits", 7, int), seed=ctx.option("emde_seed", 0, int),
                      random_source=bool(ctx.option("model_random_source", RANDOM_SOURCE, int)))
    save_coder(spark, coder, item_codes(coder, sources), f"{wd}/coder")
    train_model(spark, events=ctx.train.select("session", "item", "t"), coder=f"{wd}/coder", output=f"{wd}/model",
                customer="session", item="item", timestamp="t",
                half_life=ctx.option("emde_half_life", 600.0, float), recent=ctx.option("model_recent", 1, int),
                hidden=ctx.option("model_hidden", 1024, int), layers=ctx.option("model_layers", 3, int),
                epochs=ctx.option("model_epochs", 5, int), patience=ctx.option("model_patience", 2, int),
                batch_size=ctx.option("model_batch_size", 256, int), lr=ctx.option("model_lr", 0.004, float),
                processes=ctx.option("model_processes", 1, int), seed=ctx.option("model_seed", 0, int),
                validation_fraction=0.1, recall_k=ctx.k)
    events = ctx.prefixes.select("prefix_id", F.explode(F.arrays_zip("items", "times")).alias("e")) \
        .select(F.col("prefix_id").alias("customer"), F.col("e.items").alias("item"), F.col("e.times").alias("t"))
    # popularity scoring: item popularity of the training sessions (not of the prefixes being scored)
    pop = ctx.train.groupBy("item").agg(F.count(F.lit(1)).cast("double").alias("weight"))
    recs, _ = recommend_with_model(load_model(f"{wd}/model"), events, spark.read.parquet(f"{wd}/coder/codes"),
                                   customer="customer", item="item", timestamp="t", k=ctx.k,
                                   scoring=ctx.option("model_scoring", SCORING), popularity=pop,
                                   sketch_weight=ctx.option("model_sketch_weight", SKETCH_WEIGHT, float))
    return _explode_lists(recs, "customer").withColumnRenamed("customer", "prefix_id")


def _iterations(text: str) -> list[int]:
    """``model_iterations`` (``"1,4"``) -> ``[1, 4]``: the extra Cleora sources' iteration counts
    (a repeated count once: the same embedding coded twice adds nothing)."""
    try:
        out = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        out = [0]
    if any(n < 1 for n in out):
        raise ConfigError(f"option model_iterations must list positive iteration counts, e.g. 1,4; got {text!r}")
    return list(dict.fromkeys(out))
