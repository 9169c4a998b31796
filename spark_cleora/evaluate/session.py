"""``spark-cleora evaluate session``: session-based next-item prediction (the session-rec protocol).

Protocol (Ludewig & Jannach's session-rec, "evaluation_next"; every method on the same prefixes):

1. Training and test events are read from ``--train`` and ``--test`` (a time-based split made
   beforehand). Each session's events are ordered by time, ties by file order.
2. Test events whose item never occurs in training are removed; test sessions left with fewer than
   2 events are dropped.
3. For every test session ``s_1 .. s_n`` and every ``t = 1 .. n-1`` the prefix ``s_1 .. s_t``
   predicts ``s_{t+1}``: each method returns ``k`` items (ties broken by item id); repeated items
   are targets like any other.
4. Over all predictions: HitRate@k (the target is in the list) and MRR@k (1/rank, 0 beyond k);
   coverage@k = distinct recommended items / distinct training items; the wall-clock seconds of
   each method (its Spark jobs included).

The methods and their parameters are described in :mod:`spark_cleora.evaluate.session_methods`
(``POP``, ``AR``, ``SR``, ``V-SKNN``, ``CLEORA-KNN``, ``EMDE``); more can be plugged in there.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shutil
import tempfile
import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from ..errors import ConfigError
from ..storage.outputs import claim_work_dir
from ..engine.hyperedges import epoch_seconds
from ..storage.readers import read_table, require_columns
from ..runtime.session import job_description
from .graphs import add_output_options, embed_options, write_report
from .session_methods import METHODS, MethodContext, keep_top

log = logging.getLogger(__name__)

# Modules registering methods with ``session_methods.register_method`` (imported before a run).
METHOD_MODULES: list[str] = ["spark_cleora.evaluate.session_methods", "spark_cleora.evaluate.session_embedding",
                             "spark_cleora.evaluate.session_model"]
DEFAULT_METHODS = ("POP", "AR", "SR", "V-SKNN", "CLEORA-KNN", "EMDE")


def load_methods() -> dict[str, Any]:
    for module in METHOD_MODULES:
        importlib.import_module(module)
    return METHODS


def read_events(spark: SparkSession, paths: list[str], *, fmt: str | None, session: str, item: str,
                timestamp: str) -> DataFrame:
    """``session``, ``item`` (strings), ``t`` (epoch seconds), ``_row`` (file order) of an event table."""
    fmt = fmt or _format_of(paths[0])
    df = read_table(spark, paths, fmt)
    require_columns(df, [session, item, timestamp], f"events {paths[0]!r}")
    out = df.select(F.col(session).cast("string").alias("session"), F.col(item).cast("string").alias("item"),
                    epoch_seconds(df, timestamp).alias("t"), F.monotonically_increasing_id().alias("_row"))
    return out.filter(F.col("session").isNotNull() & F.col("item").isNotNull() & F.col("t").isNotNull())


def _format_of(path: str) -> str:
    ext = os.path.splitext(path.rstrip("/"))[1].lower()
    return {".csv": "csv", ".tsv": "tsv", ".txt": "tsv"}.get(ext, "parquet")


def with_positions(events: DataFrame) -> DataFrame:
    """Adds ``pos``: 1-based position in the session by time, then file order."""
    order = Window.partitionBy("session").orderBy("t", "_row")
    return events.withColumn("pos", F.row_number().over(order))


def session_prefixes(train: DataFrame, test: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Steps 2 and 3 of the protocol: (prefixes, targets).

    ``prefixes``: ``prefix_id``, ``session``, ``t`` (prefix length), ``items``, ``times``;
    ``targets``: ``prefix_id``, ``target`` (the event after the prefix).
    """
    known = test.join(train.select("item").distinct(), "item", "left_semi")
    ev = known.withColumn("_n", F.count(F.lit(1)).over(Window.partitionBy("session"))).filter(F.col("_n") >= 2)
    seq = ev.groupBy("session").agg(F.sort_array(F.collect_list(F.struct("t", "_row", "item"))).alias("e"))
    seq = seq.select("session", F.col("e.item").alias("all_items"), F.col("e.t").alias("all_times"))
    steps = seq.select("*", F.explode(F.sequence(F.lit(1), F.size("all_items") - 1)).alias("t"))
    steps = steps.select(F.concat_ws("#", "session", F.col("t").cast("string")).alias("prefix_id"), "session", "t",
                         F.slice("all_items", 1, F.col("t")).alias("items"),
                         F.slice("all_times", 1, F.col("t")).alias("times"),
                         F.element_at("all_items", F.col("t") + 1).alias("target"))
    return steps.drop("target"), steps.select("prefix_id", "target")


def score_lists(recs: DataFrame, targets: DataFrame, *, k: int, n_items: int) -> dict[str, float]:
    """HR@k, MRR@k over every target (no list = a miss) and coverage@k of the ranked lists."""
    hits = recs.join(targets.withColumnRenamed("target", "item"), ["prefix_id", "item"])
    r = targets.join(hits.select("prefix_id", "rank"), "prefix_id", "left").agg(
        F.count(F.lit(1)).alias("n"),
        F.avg(F.col("rank").isNotNull().cast("double")).alias("hr"),
        F.avg(F.coalesce(1.0 / F.col("rank"), F.lit(0.0))).alias("mrr")).collect()[0]
    covered = recs.select("item").distinct().count()
    return {f"HR@{k}": float(r["hr"] or 0.0), f"MRR@{k}": float(r["mrr"] or 0.0),
            f"coverage@{k}": covered / n_items if n_items else 0.0, "predictions": int(r["n"])}


def evaluate_session(
    spark: SparkSession,
    train: DataFrame,
    test: DataFrame,
    *,
    work_dir: str,
    k: int = 20,
    methods: tuple[str, ...] = DEFAULT_METHODS,
    options: dict[str, str] | None = None,
    embed_opts: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the protocol of the module docstring; ``train``/``test`` as from :func:`read_events`."""
    registry = load_methods()
    unknown = [m for m in methods if m not in registry]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; known: {sorted(registry)}")
    if k < 1:
        raise ConfigError(f"--k must be >= 1; got {k}")
    wd = work_dir.rstrip("/")
    t0 = time.perf_counter()
    with job_description(spark, "spark_cleora evaluate session: prefixes"):
        with_positions(train).write.mode("overwrite").parquet(f"{wd}/train")
        train = spark.read.parquet(f"{wd}/train")
        prefixes, targets = session_prefixes(train, test)
        prefixes.join(targets, "prefix_id").write.mode("overwrite").parquet(f"{wd}/prefixes")
        stored = spark.read.parquet(f"{wd}/prefixes")
    # methods see the prefixes only: the targets stay with the evaluator
    prefixes = stored.select("prefix_id", "items", "times")
    targets = stored.select("prefix_id", "target")
    n_items = train.select("item").distinct().count()
    n_sessions = stored.select("session").distinct().count()
    data = {
        "train_events": train.count(), "train_sessions": train.select("session").distinct().count(),
        "train_items": n_items, "test_events": test.count(),
        "test_events_kept": stored.count() + n_sessions, "test_sessions_kept": n_sessions,
    }
    seconds = {"prefixes": round(time.perf_counter() - t0, 2)}
    opts = {"dim": 256, "iterations": 3, **(embed_opts or {})}
    cache: dict[str, DataFrame] = {}

    def embedding(iterations: int | None = None) -> DataFrame:
        """The run's Cleora embedding of the training sessions; ``iterations`` another iteration count."""
        own = iterations in (None, opts["iterations"])
        name = "embedding" if own else f"embedding_{iterations}"  # directory, cache key and timing key
        if name not in cache:
            from ..engine.embed import embed

            t1 = time.perf_counter()
            run = opts if own else {**opts, "iterations": iterations}
            with job_description(spark, "spark_cleora evaluate session: embed training sessions"):
                embed(train, hyperedge="session", entity="item", **run).select("entity", "embedding") \
                    .write.mode("overwrite").parquet(f"{wd}/{name}")
            cache[name] = spark.read.parquet(f"{wd}/{name}")
            seconds[name] = round(time.perf_counter() - t1, 2)
        return cache[name]

    results: dict[str, Any] = {}
    n = None
    for name in methods:
        method = registry[name]
        if method.needs_embedding:
            embedding()  # shared: timed on its own, not charged to the first method using it
        t1 = time.perf_counter()
        mdir = f"{wd}/method_{len(results)}"
        ctx = MethodContext(spark=spark, train=train, prefixes=prefixes, k=k, work_dir=mdir,
                            options=dict(options or {}), embedding=embedding)
        with job_description(spark, f"spark_cleora evaluate session: {name}"):
            recs = method.fn(ctx).select("prefix_id", F.col("item").cast("string"), F.col("score").cast("double"))
            keep_top(recs, k).write.mode("overwrite").parquet(f"{mdir}/lists")
            lists = spark.read.parquet(f"{mdir}/lists")
            m = score_lists(lists, targets, k=k, n_items=n_items)
        n = m.pop("predictions")
        m["seconds"] = round(time.perf_counter() - t1, 2)
        results[name] = m
        log.info("%s: %s", name, m)
    return {
        "protocol": {"name": "session-rec next-item (every prefix predicts the next event)", "k": k,
                     "test_items_not_in_train": "removed", "min_test_session_length": 2,
                     "ties": "score descending, then item id ascending (string order)",
                     "repeated_items": "count as targets; no method removes the prefix's items"},
        "predictions": n, "data": data,
        "methods": results,
        "parameters": {name: registry[name].params for name in methods},
        "options": dict(options or {}),
        "embedding": opts if any(registry[m].needs_embedding for m in methods) else None,
        "seconds": seconds, "seconds_total": round(time.perf_counter() - t0, 1),
    }


def format_table(report: dict[str, Any]) -> str:
    k = report["protocol"]["k"]
    cols = [f"HR@{k}", f"MRR@{k}", f"coverage@{k}", "seconds"]
    lines = [f"{'method':<14}" + "".join(f"{c:>14}" for c in cols)]
    for name, m in report["methods"].items():
        lines.append(f"{name:<14}" + "".join(f"{m[c]:>14.4f}" if c != "seconds" else f"{m[c]:>14.1f}" for c in cols))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def register(esub: argparse._SubParsersAction) -> None:
    p = esub.add_parser(
        "session", help="session-based next-item prediction: EMDE and Cleora vs POP, AR, SR, V-SKNN",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data (a time-based split made beforehand)")
    g.add_argument("--train", nargs="+", required=True, metavar="PATH", help="training events")
    g.add_argument("--test", nargs="+", required=True, metavar="PATH", help="test events")
    g.add_argument("--format", choices=["parquet", "csv", "tsv"],
                   help="input format (default: by extension; .txt/.tsv tab-separated, .csv comma; both with a "
                        "header row; else Parquet)")
    g.add_argument("--session", required=True, help="session column")
    g.add_argument("--item", required=True, help="item column")
    g.add_argument("--timestamp", required=True, help="event time column (epoch seconds or timestamp)")
    g = p.add_argument_group("protocol")
    g.add_argument("--k", type=int, default=20, help="list length (default 20)")
    g.add_argument("--methods", nargs="+", default=None, metavar="NAME",
                   help=f"methods to run (default: {' '.join(DEFAULT_METHODS)})")
    g.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a method parameter, e.g. emde_half_life=600 or sr_steps=10 (repeatable)")
    add_output_options(p, _run)


def parse_options(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--option wants NAME=VALUE; got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def _run(ns: argparse.Namespace) -> int:
    from ..options import spark_from_args

    options = parse_options(ns.option)
    spark = spark_from_args(ns)
    cols = {"fmt": ns.format, "session": ns.session, "item": ns.item, "timestamp": ns.timestamp}
    train = read_events(spark, ns.train, **cols)
    test = read_events(spark, ns.test, **cols)
    work = ns.work_dir or tempfile.mkdtemp(prefix="spark_cleora_evalsession_")
    if ns.work_dir:
        claim_work_dir(ns.work_dir)  # created (or adopted empty) and marked: a rerun may reuse it
    try:
        report = evaluate_session(spark, train, test, work_dir=work, k=ns.k,
                                  methods=tuple(ns.methods or DEFAULT_METHODS), options=options,
                                  embed_opts=embed_options(ns))
    finally:
        if not ns.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    report["train"], report["test"] = list(ns.train), list(ns.test)
    report["columns"] = {"session": ns.session, "item": ns.item, "timestamp": ns.timestamp}
    write_report(ns.report, report)
    print(format_table(report))
    d = report["data"]
    print(f"{report['predictions']} predictions from {d['test_sessions_kept']} test sessions; "
          f"{d['train_events']} training events, {d['train_items']} items; {report['seconds_total']:.0f}s")
    return 0
