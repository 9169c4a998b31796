"""``spark-cleora evaluate recommend``: leave-last-out top-k recommendation, EMDE vs baselines.

Protocol (one run, all methods on the same split):

1. Each customer's events are ordered by time (newest first; ties by ``xxhash64(split_seed, customer,
   item)``, so ratings given in the same second do not favour low item ids). ``--holdout last``: the
   newest event is the test item and the rest is training; ``second-to-last`` (validation): the
   newest event is dropped and the one before is held out. Customers with too few events only train.
   Without timestamps the order is the hash alone (a random leave-one-out).
2. Item embeddings: Cleora on the *training* events only (hyperedge = customer, entity = item).
3. EMDE: fit the coder on those embeddings, sketch every customer's training events (``--half-life``,
   ``--decay-anchor``), recommend ``k`` items per test customer with each decoder.
4. Baselines on the same split: ``popularity`` (most frequent training items), ``knn``, Cleora
   item-kNN: ``score(i) = sum_j w_j cos(e_i, e_j)`` over the customer's training items with the same
   decay weights ``w_j`` as the sketches, and ``als``, Spark ML's ALS with implicit feedback
   (``--als-rank 64 --als-iterations 15 --als-reg 0.1 --als-alpha 10``, seed 0; rating = the
   customer's training events of the item), ranked by the dot product of the factors.
5. Items the customer has in training are never recommended (``--no-exclude-seen`` to allow them).
   Metrics over all test customers (a test item unseen in training is a miss for every method):
   Recall@k (= HitRate@k, one held-out item), NDCG@k, MRR@k; beyond accuracy, coverage@k (distinct
   recommended items / distinct training items) and seen@k (the share of recommended items the
   customer already has in training: 0 with ``--exclude-seen``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..runtime.compat import grouped_arrow
from ..engine.embed import embed
from ..emde.coder import fit_coder, item_codes
from ..emde.recommend import recommend
from ..emde.score import Kernel, top_k
from ..emde.sketch import build_sketches, decay_factor
from ..engine.hyperedges import epoch_seconds
from ..errors import ConfigError
from ..runtime.session import job_description
from ..engine.vectors import from_list_array
from .graphs import add_output_options, embed_options, write_report

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dataset:
    """Where a public dataset lives under a data directory (``--data-dir``) and how to read it."""

    files: tuple[str, ...]
    sep: str
    header: bool
    columns: tuple[str, ...]  # names given to the columns (or chosen from the header)
    customer: str
    item: str
    timestamp: str | None  # "_row" = the row order of the file
    half_life: float | None  # default decay for the preset (seconds, or events for "_row")
    exclude_seen: bool = True


DATASETS = {
    "ml-100k": Dataset(("ml-100k/u.data",), "\t", False, ("user", "item", "rating", "ts"), "user", "item", "ts", 60.0),
    "lastfm": Dataset(("lastfm-hetrec2011-2k/user_artists.dat",), "\t", True, ("userID", "artistID", "weight"),
                      "userID", "artistID", None, None),
    "amazon-games": Dataset(("amazon-games-sasrec/Video.txt",), " ", False, ("user", "item"), "user", "item", "_row", 2.0),
    "rsc15": Dataset(("yoochoose-rsc15-100k/yoochoose-clicks-100k_train_full.txt",
                      "yoochoose-rsc15-100k/yoochoose-clicks-100k_test.txt"),
                     "\t", True, ("SessionId", "ItemId", "Time"), "SessionId", "ItemId", "Time", 600.0,
                     exclude_seen=False),
}


def read_dataset(spark: SparkSession, name: str, data_dir: Path | str) -> tuple[DataFrame, Dataset]:
    """Events ``c``, ``i``, ``t`` (double or null), ``w`` of a preset dataset under ``data_dir``."""
    ds = DATASETS[name]
    paths = [str((Path(data_dir) / f).resolve()) for f in ds.files]
    for p in paths:
        if not os.path.exists(p):
            raise ConfigError(f"dataset {name}: {p} not found (check --data-dir)")
    df = spark.read.option("sep", ds.sep).option("header", ds.header).csv(paths)
    if not ds.header:
        df = df.toDF(*ds.columns[: len(df.columns)])
    # every value is a string here: trim (lastfm has CRLF line ends)
    df = df.select(*[F.trim(F.col(c)).alias(c) for c in df.columns])
    if ds.timestamp == "_row":
        # one file read in order: ids increase with the file position, i.e. with each user's time order
        t = F.monotonically_increasing_id().cast("double")
    elif ds.timestamp:
        t = F.col(ds.timestamp).cast("double")
    else:
        t = F.lit(None).cast("double")
    return df.select(F.col(ds.customer).alias("c"), F.col(ds.item).alias("i"), t.alias("t"), F.lit(1.0).alias("w")), ds


def split_last(events: DataFrame, *, holdout: str, seed: int) -> tuple[DataFrame, DataFrame]:
    """(train, test) by leave-last-out: test = one event per customer with enough events."""
    skip = {"last": 0, "second-to-last": 1}[holdout]
    order = Window.partitionBy("c").orderBy(F.col("t").desc_nulls_last(), F.xxhash64(F.lit(seed), "c", "i"), "i")
    ranked = events.withColumn("_r", F.row_number().over(order)) \
        .withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy("c")))
    eligible = F.col("_n") >= skip + 2  # at least one training event remains
    test = ranked.filter(eligible & (F.col("_r") == skip + 1))
    train = ranked.filter(~eligible | (F.col("_r") > skip + 1))
    return train.drop("_r", "_n"), test.select("c", "i")


def metrics(recs: DataFrame, test: DataFrame, *, k: int, train: DataFrame | None = None) -> dict[str, float]:
    """Recall@k, NDCG@k and MRR@k over every test customer (no recommendations = a miss).

    With ``train`` (``c``, ``i``) also the beyond-accuracy columns: ``coverage@k``, the distinct
    recommended items over the distinct training items, and ``seen@k``, the share of all recommended
    items the customer already has in training (0 when seen items are excluded).
    """
    joined = test.join(recs.select(F.col("customer").alias("c"), "items"), "c", "left")
    pos = F.coalesce(F.array_position(F.slice(F.coalesce("items", F.array().cast("array<string>")), 1, k), F.col("i")),
                     F.lit(0))
    r = joined.select(pos.alias("p")).agg(
        F.count(F.lit(1)).alias("n"),
        F.avg((F.col("p") > 0).cast("double")).alias("recall"),
        F.avg(F.when(F.col("p") > 0, 1.0 / F.log2(F.col("p") + 1.0)).otherwise(0.0)).alias("ndcg"),
        F.avg(F.when(F.col("p") > 0, 1.0 / F.col("p")).otherwise(0.0)).alias("mrr"),
    ).collect()[0]
    out = {f"recall@{k}": float(r["recall"]), f"ndcg@{k}": float(r["ndcg"]), f"mrr@{k}": float(r["mrr"]),
           "customers": int(r["n"])}
    if train is not None:
        listed = recs.select(F.col("customer").alias("c"), F.explode(F.slice("items", 1, k)).alias("i")) \
            .join(test.select("c"), "c", "left_semi")
        known = train.select("c", "i").distinct().withColumn("seen", F.lit(1))
        b = listed.join(known, ["c", "i"], "left").agg(
            F.count(F.lit(1)).alias("n"), F.count("seen").alias("seen"), F.count_distinct("i").alias("items")
        ).collect()[0]
        n_items = train.select("i").distinct().count()
        out[f"coverage@{k}"] = int(b["items"]) / n_items if n_items else 0.0
        out[f"seen@{k}"] = int(b["seen"]) / int(b["n"]) if b["n"] else 0.0
    return out


def popularity_baseline(train: DataFrame, queries: DataFrame, *, k: int, exclude: bool, n_queries: int) -> DataFrame:
    """The ``k`` most frequent training items (ties by id) the customer has not seen."""
    counts = train.groupBy(F.col("i").alias("id")).agg(F.count(F.lit(1)).alias("n"))
    cands = counts.select("id", F.array().cast("array<int>").alias("idx"), F.array().cast("array<float>").alias("val"),
                          F.log("n").alias("prior"))
    q = _with_exclusions(queries.select(F.col("c").alias("id"), F.array().cast("array<int>").alias("idx"),
                                        F.array().cast("array<float>").alias("val")), train, exclude)
    out = top_k(q, cands, kernel=Kernel(length=1), k=k, n_queries=n_queries)
    return out.withColumnRenamed("id", "customer")


def knn_baseline(train_w: DataFrame, emb: DataFrame, queries: DataFrame, *, dim: int, k: int, exclude: bool,
                 n_queries: int) -> DataFrame:
    """Cleora item-kNN: ``sum_j w_j cos(e_i, e_j)`` = ``<e_i, sum_j w_j e_j>`` (unit-norm embeddings)."""
    vecs = train_w.join(queries.select("c"), "c", "left_semi") \
        .join(emb.select(F.col("entity").alias("i"), "embedding"), "i").select("c", "wt", "embedding")

    def user_vector(tbl: pa.Table) -> pa.Table:
        e = from_list_array(tbl.column("embedding"), dim).astype(np.float64)
        v = (tbl.column("wt").to_numpy() @ e).astype(np.float32)
        return pa.table({"id": [tbl.column("c")[0].as_py()], "idx": [list(range(dim))], "val": [v.tolist()]},
                        schema=pa.schema([("id", pa.string()), ("idx", pa.list_(pa.int32())),
                                          ("val", pa.list_(pa.float32()))]))

    q = grouped_arrow(vecs, ["c"], user_vector, "id string, idx array<int>, val array<float>")
    q = _with_exclusions(q, train_w, exclude)
    cands = emb.select(F.col("entity").alias("id"), F.sequence(F.lit(0), F.lit(dim - 1)).alias("idx"),
                       F.col("embedding").alias("val"), F.lit(0.0).alias("prior"))
    out = top_k(q, cands, kernel=Kernel(length=dim), k=k, n_queries=n_queries)
    return out.withColumnRenamed("id", "customer")


@dataclass(frozen=True)
class AlsParams:
    """Spark ML ALS with implicit feedback (Hu, Koren & Volinsky): every training event is a 1."""

    rank: int = 64
    iterations: int = 15
    reg: float = 0.1
    alpha: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1 or self.iterations < 1 or self.reg < 0 or self.alpha <= 0:
            raise ConfigError(f"ALS needs rank >= 1, iterations >= 1, reg >= 0, alpha > 0; got {self}")


def als_baseline(train: DataFrame, queries: DataFrame, *, k: int, exclude: bool, n_queries: int,
                 params: AlsParams = AlsParams()) -> DataFrame:
    """Spark ML's implicit ALS: score = <user factors, item factors>, top ``k`` (ties by item id)."""
    from pyspark.ml.recommendation import ALS

    # ALS wants integer ids: a dense rank over the (distinct) ids, kept as DataFrames
    users = train.select("c").distinct().withColumn("u", F.dense_rank().over(Window.orderBy("c")) - 1)
    items = train.select("i").distinct().withColumn("v", F.dense_rank().over(Window.orderBy("i")) - 1)
    counts = train.groupBy("c", "i").agg(F.count(F.lit(1)).cast("float").alias("r")) \
        .join(users, "c").join(items, "i")
    model = ALS(rank=params.rank, maxIter=params.iterations, regParam=params.reg, alpha=params.alpha,
                implicitPrefs=True, userCol="u", itemCol="v", ratingCol="r", seed=params.seed,
                coldStartStrategy="drop").fit(counts)
    idx = F.sequence(F.lit(0), F.lit(params.rank - 1))
    q = model.userFactors.join(users, F.col("id") == F.col("u")).join(queries, "c", "left_semi") \
        .select(F.col("c").alias("id"), idx.alias("idx"), F.col("features").cast("array<float>").alias("val"))
    cands = model.itemFactors.join(items, F.col("id") == F.col("v")) \
        .select(F.col("i").alias("id"), idx.alias("idx"), F.col("features").cast("array<float>").alias("val"),
                F.lit(0.0).alias("prior"))
    q = _with_exclusions(q, train, exclude)
    out = top_k(q, cands, kernel=Kernel(length=params.rank), k=k, n_queries=n_queries)
    return out.withColumnRenamed("id", "customer")


def _with_exclusions(queries: DataFrame, train: DataFrame, exclude: bool) -> DataFrame:
    if not exclude:
        return queries
    seen = train.groupBy(F.col("c").alias("id")).agg(F.collect_set("i").alias("exclude"))
    return queries.join(seen, "id", "left")


def evaluate_recommend(
    spark: SparkSession,
    events: DataFrame,
    *,
    work_dir: str,
    k: int = 10,
    holdout: str = "last",
    split_seed: int = 0,
    embed_opts: dict[str, Any] | None = None,
    depth: int = 10,
    bits: int = 7,
    coder_seeds: tuple[int, ...] = (0,),
    half_lives: tuple[float | None, ...] = (None,),
    decay_anchor: str = "last-event",
    scorings: tuple[str, ...] = ("popularity", "geometric"),
    sketch_weights: tuple[float, ...] = (0.5,),
    exclude_seen: bool = True,
    baselines: tuple[str, ...] = ("popularity", "knn", "als"),
    als: AlsParams = AlsParams(),
) -> dict[str, Any]:
    """Run the protocol of the module docstring on ``events`` (``c``, ``i``, ``t``, ``w`` columns)."""
    t_all = time.perf_counter()
    times: dict[str, float] = {}
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        now = time.perf_counter()
        times[name] = round(times.get(name, 0.0) + now - clock[0], 2)
        clock[0] = now

    has_time = events.filter(F.col("t").isNotNull()).limit(1).count() > 0
    if any(h is not None for h in half_lives) and not has_time:
        raise ConfigError("--half-life needs timestamps; this dataset has none")
    tag = (lambda h: f"_hl{'none' if h is None else f'{h:g}'}") if len(half_lives) > 1 else (lambda h: "")
    clean = events.filter(F.col("c").isNotNull() & F.col("i").isNotNull()) \
        .select(F.col("c").cast("string").alias("c"), F.col("i").cast("string").alias("i"), "t", "w")
    train, test = split_last(clean, holdout=holdout, seed=split_seed)
    wd = work_dir.rstrip("/")
    with job_description(spark, "spark_cleora evaluate recommend: split"):
        train.write.mode("overwrite").parquet(f"{wd}/train")
        test.write.mode("overwrite").parquet(f"{wd}/test")
    train, test = spark.read.parquet(f"{wd}/train"), spark.read.parquet(f"{wd}/test")
    n_test = test.count()
    sizes = train.agg(F.count(F.lit(1)).alias("events"), F.count_distinct("c").alias("customers"),
                      F.count_distinct("i").alias("items")).collect()[0]
    cold = test.join(train.select("i").distinct(), "i", "left_anti").count()
    lap("split")

    opts = {"dim": 256, "iterations": 3, **(embed_opts or {})}
    with job_description(spark, "spark_cleora evaluate recommend: embed training events"):
        emb = embed(train, hyperedge="c", entity="i", **opts).select("entity", "embedding")
        emb.write.mode("overwrite").parquet(f"{wd}/emb")
    emb = spark.read.parquet(f"{wd}/emb")
    dim = len(emb.select("embedding").first()["embedding"])
    lap("embed")

    test_customers = test.select("c")
    seen = train.select(F.col("c").alias("customer"), F.col("i").alias("item")) if exclude_seen else None
    results: dict[str, Any] = {}
    for seed in coder_seeds:
        coder = fit_coder([emb], names=["train_embeddings"], depth=depth, bits=bits, seed=seed)
        item_codes(coder, [emb]).write.mode("overwrite").parquet(f"{wd}/codes")
        codes = spark.read.parquet(f"{wd}/codes")
        lap("emde_fit")
        for half_life in half_lives:
            anchor = decay_anchor if half_life is not None else "as-of"
            sk = build_sketches(train, codes, customer="c", item="i", timestamp="t" if has_time else None,
                                weight="w", half_life=half_life, decay_anchor=anchor)
            sk.sketches.join(test_customers.withColumnRenamed("c", "customer"), "customer", "left_semi") \
                .write.mode("overwrite").parquet(f"{wd}/sketches")
            sk.items.write.mode("overwrite").parquet(f"{wd}/items")
            sketches, items = spark.read.parquet(f"{wd}/sketches"), spark.read.parquet(f"{wd}/items")
            n_sk = sketches.count()
            lap("emde_sketch")
            for scoring in scorings:
                for weight in (sketch_weights if scoring == "popularity" else (None,)):
                    name = f"emde_{scoring}" + (f"_w{weight:g}" if weight is not None else "") + tag(half_life)
                    recs, _ = recommend(sketches, codes, width=coder.width, n_codes=coder.n_codes, k=k,
                                        scoring=scoring, sketch_weight=weight if weight is not None else 0.5,
                                        popularity=items, seen=seen, n_customers=n_sk)
                    with job_description(spark, f"spark_cleora evaluate recommend: {name}"):
                        results.setdefault(name, []).append(metrics(recs, test, k=k, train=train))
                    lap("emde_recommend")

    if "popularity" in baselines:
        recs = popularity_baseline(train, test_customers, k=k, exclude=exclude_seen, n_queries=n_test)
        results["popularity"] = [metrics(recs, test, k=k, train=train)]
        lap("popularity")
    if "knn" in baselines:
        for half_life in half_lives:
            if half_life is not None and decay_anchor == "last-event":
                w = train.join(train.groupBy("c").agg(F.max("t").alias("anchor")), "c")
                wt = F.col("w") * decay_factor(F.col("anchor"), F.col("t"), half_life)
            else:
                as_of = train.agg(F.max("t")).collect()[0][0] if half_life is not None else None
                w = train
                wt = F.col("w") * decay_factor(F.lit(as_of).cast("double"), F.col("t"), half_life)
            recs = knn_baseline(w.withColumn("wt", wt), emb, test_customers, dim=dim, k=k, exclude=exclude_seen,
                                n_queries=n_test)
            results["knn" + tag(half_life)] = [metrics(recs, test, k=k, train=train)]
            lap("knn")
    if "als" in baselines:
        recs = als_baseline(train, test_customers, k=k, exclude=exclude_seen, n_queries=n_test, params=als)
        results["als"] = [metrics(recs, test, k=k, train=train)]
        lap("als")

    summary = {}
    for name, runs in results.items():
        keys = [key for key in runs[0] if key != "customers"]
        summary[name] = {key: float(np.mean([r[key] for r in runs])) for key in keys}
        if len(runs) > 1:
            summary[name].update({f"{key}_min": min(r[key] for r in runs) for key in keys})
            summary[name].update({f"{key}_max": max(r[key] for r in runs) for key in keys})
    return {
        "protocol": {"holdout": holdout, "split_seed": split_seed, "k": k, "exclude_seen": exclude_seen},
        "data": {"train_events": int(sizes["events"]), "train_customers": int(sizes["customers"]),
                 "train_items": int(sizes["items"]), "test_customers": n_test, "test_items_not_in_train": cold,
                 "has_timestamps": has_time},
        "embedding": opts, "emde": {"depth": depth, "bits": bits, "coder_seeds": list(coder_seeds),
                                     "half_lives": list(half_lives), "decay_anchor": decay_anchor,
                                     "sketch_weights": list(sketch_weights)},
        "als": {**asdict(als), "implicit": True, "ratings": "training event counts per (customer, item)"}
        if "als" in baselines else None,
        "results": summary, "runs": results, "seconds": times,
        "seconds_total": round(time.perf_counter() - t_all, 1),
    }


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def register(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "recommend", help="leave-last-out recommendation: EMDE vs popularity and Cleora item-kNN",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data (a preset, or an event table)")
    g.add_argument("--dataset", choices=sorted(DATASETS),
                   help="a public dataset, in its published layout under --data-dir (e.g. ml-100k/u.data)")
    g.add_argument("--data-dir", help="the directory holding the --dataset folders (required with --dataset)")
    g.add_argument("--events", nargs="+", metavar="PATH", help="event table(s) instead of --dataset")
    g.add_argument("--events-format", choices=["parquet", "csv", "tsv"], default="parquet")
    g.add_argument("--customer", help="customer column")
    g.add_argument("--item", help="item column")
    g.add_argument("--timestamp", help="event time column (epoch seconds or timestamp)")
    g = p.add_argument_group("protocol")
    g.add_argument("--holdout", choices=["last", "second-to-last"], default="last",
                   help="test on the newest event (default) or validate on the one before")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the tie-break hash (default 0)")
    g.add_argument("--k", type=int, default=10, help="list length (default 10)")
    g.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=None,
                   help="never recommend training items (default: yes; the rsc15 preset: no)")
    g.add_argument("--baselines", nargs="*", choices=["popularity", "knn", "als"], default=["popularity", "knn", "als"])
    g = p.add_argument_group("ALS baseline (Spark ML, implicit feedback)")
    g.add_argument("--als-rank", type=int, default=AlsParams.rank, help=f"factors (default {AlsParams.rank})")
    g.add_argument("--als-iterations", type=int, default=AlsParams.iterations,
                   help=f"iterations (default {AlsParams.iterations})")
    g.add_argument("--als-reg", type=float, default=AlsParams.reg, help=f"regularisation (default {AlsParams.reg})")
    g.add_argument("--als-alpha", type=float, default=AlsParams.alpha,
                   help=f"implicit confidence alpha (default {AlsParams.alpha})")
    g = p.add_argument_group("EMDE")
    g.add_argument("--depth", type=int, default=10, help="N partitionings (default 10)")
    g.add_argument("--bits", type=int, default=7, help="K bits, 2**K buckets (default 7)")
    g.add_argument("--coder-seeds", type=int, nargs="+", default=[0], help="one EMDE run per coder seed (default 0)")
    g.add_argument("--half-life", type=_half_life, nargs="+",
                   help="decay half-life(s) in seconds, or 'none' (default: the preset's; none); several: one "
                        "EMDE and kNN run each")
    g.add_argument("--decay-anchor", choices=["last-event", "as-of"], default="last-event",
                   help="decay to each customer's newest event (default) or to the newest event overall")
    g.add_argument("--scoring", nargs="+", choices=["popularity", "geometric"], default=["popularity", "geometric"])
    g.add_argument("--sketch-weight", type=float, nargs="+", default=[0.5],
                   help="popularity decoder weights to evaluate (default 0.5)")
    add_output_options(p, _run)


def _half_life(text: str) -> float | None:
    if text.lower() == "none":
        return None
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"half-life must be > 0 seconds or 'none'; got {text}")
    return value


def _events(spark: SparkSession, ns: argparse.Namespace) -> tuple[DataFrame, float | None, bool]:
    if ns.dataset:
        if not ns.data_dir:
            raise ConfigError("--dataset needs --data-dir DIR: the directory holding the dataset's folder")
        df, ds = read_dataset(spark, ns.dataset, ns.data_dir)
        return df, ds.half_life, ds.exclude_seen
    if not ns.events or not ns.customer or not ns.item:
        raise ConfigError("give --dataset NAME, or --events PATH with --customer COL and --item COL")
    from ..storage.readers import read_table

    df = read_table(spark, ns.events, ns.events_format)
    t = epoch_seconds(df, ns.timestamp) if ns.timestamp else F.lit(None).cast("double")
    return df.select(F.col(ns.customer).alias("c"), F.col(ns.item).alias("i"), t.alias("t"), F.lit(1.0).alias("w")), None, True


def _run(ns: argparse.Namespace) -> int:
    from ..options import spark_from_args

    spark = spark_from_args(ns)
    events, preset_half_life, preset_exclude = _events(spark, ns)
    half_lives = tuple(ns.half_life) if ns.half_life else (preset_half_life,)
    exclude = preset_exclude if ns.exclude_seen is None else ns.exclude_seen
    work = ns.work_dir or tempfile.mkdtemp(prefix="spark_cleora_evalrec_")
    if ns.work_dir:  # someone's non-empty directory is refused; ours is marked (it is not deleted)
        from ..storage.outputs import claim_work_dir

        claim_work_dir(work)
    try:
        report = evaluate_recommend(
            spark, events, work_dir=work, k=ns.k, holdout=ns.holdout, split_seed=ns.split_seed,
            embed_opts=embed_options(ns), depth=ns.depth, bits=ns.bits, coder_seeds=tuple(ns.coder_seeds),
            half_lives=half_lives, decay_anchor=ns.decay_anchor, scorings=tuple(ns.scoring),
            sketch_weights=tuple(ns.sketch_weight), exclude_seen=exclude, baselines=tuple(ns.baselines),
            als=AlsParams(rank=ns.als_rank, iterations=ns.als_iterations, reg=ns.als_reg, alpha=ns.als_alpha))
    finally:
        if not ns.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report["dataset"] = ns.dataset or list(ns.events)
    write_report(ns.report, report)
    k = ns.k
    cols = [f"recall@{k}", f"ndcg@{k}", f"mrr@{k}", f"coverage@{k}", f"seen@{k}"]
    print(f"{'method':<28}" + "".join(f"{c:>13}" for c in cols))
    for name, m in report["results"].items():
        print(f"{name:<28}" + "".join(f"{m[c]:>13.4f}" for c in cols))
    print("seconds: " + ", ".join(f"{step} {secs:g}" for step, secs in report["seconds"].items()))
    d = report["data"]
    print(f"{d['test_customers']} test customers ({d['test_items_not_in_train']} with an item unseen in training), "
          f"{d['train_events']} training events; {report['seconds_total']:.0f}s")
    return 0


