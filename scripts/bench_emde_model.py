"""Benchmark of the trained EMDE model (not a test): examples/s, training examples/s, customers/s,
and two quality checks.

    python scripts/bench_emde_model.py rsc15  [--data-dir DIR] [--work DIR] [--json OUT]
    python scripts/bench_emde_model.py ml100k [--split valid] [--sketch-weight W...] [--data-dir DIR]
        [--work DIR] [--json OUT]

``rsc15``: the whole chain on the RSC15 100k sample (train_full): Cleora embedding(s) -> coder ->
examples -> TorchDistributor training -> Spark inference for every test session's prefix of all
but its last event; each step timed (examples/s built, training examples/s, customers/s scored). ``ml100k``: leave-last-out as ``spark-cleora evaluate
recommend --dataset ml-100k`` (same split, embedding and coder; seen items excluded), Recall@10
of the trained model. ``--split valid`` holds out every customer's second-to-last rating instead
and trains on the ratings before it (``--holdout second-to-last`` of ``evaluate recommend``): the
split to choose settings on. Several ``--sketch-weight`` values score one trained model. The data
directory defaults to ``$SPARK_CLEORA_SHARED_DATA``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from spark_cleora.emde.config import RecommendConfig

SCORING = RecommendConfig.model_scoring
SKETCH_WEIGHT = RecommendConfig.model_sketch_weight


def spark_session() -> SparkSession:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    return (SparkSession.builder.master("local[2]").appName("bench_emde_model")
            .config("spark.sql.shuffle.partitions", "4").config("spark.ui.enabled", "false")
            .config("spark.sql.session.timeZone", "UTC").config("spark.driver.memory", "4g").getOrCreate())


def lap(times: dict, name: str, t0: float) -> float:
    times[name] = round(time.perf_counter() - t0, 2)
    print(f"{name}: {times[name]:.1f}s", flush=True)
    return time.perf_counter()


def coder_from(spark, embs: list, work: Path, *, random_source: bool = False) -> str:
    """A coder over one or more Cleora embeddings (and the random source): depth 10, 7 bits each."""
    from spark_cleora.emde.coder import fit_coder, item_codes, save_coder

    coder = fit_coder(embs, names=[f"train_embeddings{i}" for i in range(len(embs))], depth=10, bits=7, seed=0,
                      random_source=random_source)
    save_coder(spark, coder, item_codes(coder, embs), str(work / "coder"))
    return str(work / "coder")


def embeddings(train, work: Path, *, hyperedge: str, entity: str, iterations: list[int]) -> list:
    """One Cleora embedding (dim 256) of the training events per iteration count."""
    from spark_cleora.engine.embed import embed

    spark, out = train.sparkSession, []
    for n in iterations:
        embed(train, hyperedge=hyperedge, entity=entity, dim=256, iterations=n).select("entity", "embedding") \
            .write.parquet(str(work / f"emb{n}"))
        out.append(spark.read.parquet(str(work / f"emb{n}")))
    return out


def rsc15(spark, data: Path, work: Path, ns) -> dict:
    from spark_cleora.emde.model import load_model
    from spark_cleora.emde.model_recommend import recommend_with_model
    from spark_cleora.emde.config import TrainConfig
    from spark_cleora.emde.train import train_model, write_examples

    d = data / "yoochoose-rsc15-100k"
    read = lambda f: spark.read.option("sep", "\t").option("header", True).csv(str(d / f)) \
        .select(F.col("SessionId").alias("session"), F.col("ItemId").alias("item"), F.col("Time").cast("double").alias("t"))  # noqa: E731
    train, test = read("yoochoose-clicks-100k_train_full.txt"), read("yoochoose-clicks-100k_test.txt")
    times: dict = {}
    t0 = start = time.perf_counter()
    embs = embeddings(train, work, hyperedge="session", entity="item", iterations=ns.iterations)
    t0 = lap(times, "embed", t0)
    coder = coder_from(spark, embs, work, random_source=ns.random_source)
    t0 = lap(times, "coder", t0)
    opts = dict(coder=coder, customer="session", item="item", timestamp="t", half_life=600.0, recent=1)
    ex = write_examples(spark, TrainConfig(events=("<DataFrame>",), **opts), str(work / "examples"), events=train,
                        n_files=max(4, 2 * ns.processes))
    t0 = lap(times, "examples", t0)
    m = train_model(spark, examples=str(work / "examples"), output=str(work / "model"), hidden=ns.hidden,
                    layers=ns.layers, epochs=ns.epochs, processes=ns.processes, **opts)
    t0 = lap(times, "training", t0)
    # prediction inputs: every test session without its last event
    last = test.groupBy("session").agg(F.max("t").alias("tl"))
    prefix = test.join(last, "session").filter(F.col("t") < F.col("tl")).drop("tl")
    recs, rep = recommend_with_model(load_model(str(work / "model")), prefix, spark.read.parquet(f"{coder}/codes"),
                                     customer="session", item="item", timestamp="t", k=20)
    recs.write.parquet(str(work / "recs"))
    n = spark.read.parquet(str(work / "recs")).count()
    t0 = lap(times, "inference", t0)
    times["end_to_end"] = round(time.perf_counter() - start, 2)
    epochs = m["metrics"]
    n_examples = ex["train_examples"] + ex["val_examples"]
    return {"seconds": times, "examples_per_s": round(n_examples / times["examples"], 1),
            "train_examples": m["examples"]["train_examples"],
            "val_examples": m["examples"]["val_examples"],
            "training_examples_per_s": [e["examples_per_s"] for e in epochs], "metrics": epochs,
            "customers_scored": n, "customers_per_s": round(n / times["inference"], 1), "model": m["training"],
            "architecture": m["architecture"]}


_OTHER_SCORINGS = [("log-prob", 1.0), ("popularity", 0.5), ("popularity", 2.0), ("popularity", 10.0)]


def ml100k(spark, data: Path, work: Path, ns) -> dict:
    from spark_cleora.emde.model import load_model
    from spark_cleora.emde.model_recommend import recommend_with_model
    from spark_cleora.emde.train import train_model
    from spark_cleora.evaluate.recommend import metrics, read_dataset, split_last

    events, _ = read_dataset(spark, "ml-100k", data)
    train, test = split_last(events, holdout={"test": "last", "valid": "second-to-last"}[ns.split], seed=0)
    train.write.parquet(str(work / "train"))
    test.write.parquet(str(work / "test"))
    train, test = spark.read.parquet(str(work / "train")), spark.read.parquet(str(work / "test"))
    t0 = time.perf_counter()
    embs = embeddings(train, work, hyperedge="c", entity="i", iterations=ns.iterations)
    coder = coder_from(spark, embs, work, random_source=ns.random_source)
    m = train_model(spark, events=train, coder=coder, output=str(work / "model"), customer="c", item="i",
                    timestamp="t", half_life=ns.half_life, recent=ns.recent, target_window=ns.target_window,
                    hidden=ns.hidden, layers=ns.layers, epochs=ns.epochs,
                    max_examples=ns.max_examples, processes=ns.processes, recall_k=10)
    model = load_model(str(work / "model"))
    out = {}
    # the default scoring first, then the other scorings of the same model (for the record)
    mine = [(ns.scoring, w) for w in ns.sketch_weight]
    others = [(s, x) for s, x in _OTHER_SCORINGS if (s, x) not in mine] if ns.all_scorings else []
    for scoring, w in mine + others:
        recs, _ = recommend_with_model(model, train, spark.read.parquet(f"{coder}/codes"),
                                       customer="c", item="i", timestamp="t", k=10, scoring=scoring, sketch_weight=w,
                                       seen=train.select(F.col("c").alias("customer"), F.col("i").alias("item")))
        name = scoring if scoring == "log-prob" else f"{scoring}_w{w:g}"
        if name in out:
            continue
        recs.write.parquet(str(work / f"recs_{name}"))
        out[name] = metrics(spark.read.parquet(str(work / f"recs_{name}")), test, k=10)
        print(name, out[name], flush=True)
    return {"metrics": out, "model_metrics": m["metrics"], "seconds": round(time.perf_counter() - t0, 1),
            "settings": {"half_life": ns.half_life, "recent": ns.recent, "target_window": ns.target_window,
                         "hidden": ns.hidden, "epochs": ns.epochs, "scoring": ns.scoring, "sketch_weight": ns.sketch_weight,
                         "max_examples": ns.max_examples, "split": ns.split, "iterations": ns.iterations,
                         "random_source": ns.random_source, "layers": ns.layers}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["rsc15", "ml100k"])
    p.add_argument("--data-dir", default=os.environ.get("SPARK_CLEORA_SHARED_DATA"))
    p.add_argument("--work", default="/tmp/bench_emde_model")
    p.add_argument("--json")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--iterations", type=int, nargs="+", default=[3],
                   help="one Cleora source per iteration count (3: the evaluation's embedding)")
    p.add_argument("--random-source", action="store_true", help="add the random source to the coder")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--half-life", type=lambda x: None if x == "none" else float(x), default=60.0,
                   help="ml100k: seconds (the preset's default), or none")
    p.add_argument("--target-window", type=int, default=1, help="ml100k: target = the next N ratings")
    p.add_argument("--all-scorings", action="store_true", help="ml100k: also score with the other scorings")
    p.add_argument("--recent", type=int, default=5, help="ml100k: short-term input = the newest N ratings")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--scoring", default=SCORING, help=f"model scoring ({SCORING})")
    p.add_argument("--sketch-weight", type=float, nargs="+", default=[SKETCH_WEIGHT],
                   help=f"popularity scoring: weight(s) of the predicted sketch ({SKETCH_WEIGHT:g}); "
                        "several score the same trained model")
    p.add_argument("--split", choices=["test", "valid"], default="test",
                   help="ml100k: test = last rating held out; valid = second-to-last held out, "
                        "training on the ratings before it")
    ns = p.parse_args()
    if not ns.data_dir:
        p.error("--data-dir or SPARK_CLEORA_SHARED_DATA is required")
    work = Path(ns.work) / ns.what
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spark = spark_session()
    out = (rsc15 if ns.what == "rsc15" else ml100k)(spark, Path(ns.data_dir), work, ns)
    text = json.dumps(out, indent=2, sort_keys=True, default=str)
    print(text)
    if ns.json:
        Path(ns.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
