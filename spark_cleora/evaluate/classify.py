"""``spark-cleora evaluate classify``: node classification from embeddings (accuracy and macro-F1).

Multi-label data (``--labels-format space-multi``: lines ``node l1 [l2 ...]``) is evaluated by
one-vs-rest logistic regression with Micro/Macro-F1 instead (``spark_cleora.evaluate.multilabel``).

Protocol: the labelled nodes that have an embedding are split 80/20 with a seed (a node is a test node
when ``xxhash64(seed, node) mod 10⁶ < 0.2·10⁶``); a multinomial logistic regression is fitted on the
training nodes' embeddings and scored on the test nodes. Embeddings come from ``--embeddings`` (the
Parquet output of ``spark-cleora embed``) or are computed from ``--edges`` over the whole graph
(unsupervised, so the labels never see the embedding step).

Why Spark ML's ``LogisticRegression`` and not numpy/scipy: the training set is one row per labelled
node, which grows with the data, and the project keeps nothing on the driver that does; Spark ML fits
it on the executors (L-BFGS, one pass over the data per iteration) and works over Spark Connect in 4.x.
Only the k x k confusion counts come back, from which accuracy and macro-F1 are computed. Features
are standardised (Spark ML's default) and lightly L2-regularised (``--reg 1e-4``), like the paper's
SGD logistic regression (``alpha=1e-4``).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import BadInputError, ConfigError
from ..runtime.session import job_description
from .graphs import add_edge_options, edge_source, embed_edges, embed_options, read_edges, write_report
from .splits import TEST_FRACTION, split_nodes



def read_labels(spark: SparkSession, path: str, *, node: str | None, label: str | None,
                fmt: str) -> tuple[DataFrame, dict[str, int]]:
    """(node, label) strings: a CSV with a header (default: first and last column) or space-separated
    ``node label`` lines. A node with two different labels or an empty label is an error."""
    if fmt == "csv":
        raw = spark.read.option("header", "true").option("multiLine", "true").option("escape", '"').csv(path)
        node_c, label_c = node or raw.columns[0], label or raw.columns[-1]
    else:
        raw = spark.read.option("header", "false").option("sep", " ").csv(path)
        node_c, label_c = node or raw.columns[0], label or raw.columns[1]
        # the CSV reader keeps the first line's column count: extra labels on a line would vanish
        multi = spark.read.text(path).filter(F.size(F.split(F.trim("value"), " +")) > 2).count()
        if multi and label is None:
            raise BadInputError(f"labels: {multi} line(s) with more than one label; multi-label data needs "
                             "--labels-format space-multi")
    for c in (node_c, label_c):
        if c not in raw.columns:
            raise ConfigError(f"labels: column {c!r} not found; the file has {raw.columns}")
    lab = raw.select(F.trim(F.col(node_c).cast("string")).alias("node"),
                     F.trim(F.col(label_c).cast("string")).alias("label"))
    bad = lab.filter(F.col("node").isNull() | F.col("label").isNull() | (F.col("label") == "")).count()
    if bad:
        raise BadInputError(f"labels: {bad} row(s) without a node or a label")
    lab = lab.distinct()
    clash = lab.groupBy("node").count().filter("count > 1").limit(1).collect()
    if clash:
        raise BadInputError(f"labels: node {clash[0]['node']!r} has several labels (multi-label data is not "
                         "supported; keep one label per node)")
    return lab, {"labelled_nodes": lab.count()}


def macro_f1(confusion: np.ndarray) -> float:
    """Unweighted mean over classes of F1 = 2·tp / (2·tp + fp + fn) (rows: true, columns: predicted)."""
    tp = np.diag(confusion).astype(float)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denom = 2 * tp + fp + fn
    return float(np.mean(np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)))


def classify(emb: DataFrame, labels: DataFrame, *, seed: int = 0, test_fraction: float = TEST_FRACTION,
             reg: float = 1e-4, max_iter: int = 100) -> dict[str, Any]:
    """Fit on the training nodes, score the test nodes: accuracy, macro-F1 and the counts."""
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StringIndexer
    from pyspark.ml.functions import array_to_vector

    spark = emb.sparkSession
    data = split_nodes(labels.join(emb.withColumnRenamed("entity", "node"), "node"), seed=seed,
                       test_fraction=test_fraction)
    data = data.select("node", "label", "is_test", array_to_vector("embedding").alias("features"))
    indexer = StringIndexer(inputCol="label", outputCol="y", stringOrderType="alphabetAsc").fit(data)
    data = indexer.transform(data).localCheckpoint(eager=True)
    train, test = data.filter(~F.col("is_test")), data.filter(F.col("is_test"))
    with job_description(spark, "spark_cleora: classification fit"):
        model = LogisticRegression(featuresCol="features", labelCol="y", regParam=reg, elasticNetParam=0.0,
                                   maxIter=max_iter, family="multinomial").fit(train)
    k = len(indexer.labels)
    with job_description(spark, "spark_cleora: classification score"):
        counts = model.transform(test).groupBy("y", "prediction").count().collect()  # <= k x k rows
    confusion = np.zeros((k, k), dtype=np.int64)
    for r in counts:
        confusion[int(r["y"]), int(r["prediction"])] = int(r["count"])
    n_test = int(confusion.sum())
    return {"accuracy": float(np.trace(confusion) / n_test) if n_test else float("nan"),
            "macro_f1": macro_f1(confusion), "classes": k, "train_nodes": train.count(), "test_nodes": n_test}


def _run(ns: argparse.Namespace) -> int:
    from ..options import spark_from_args

    if bool(ns.embeddings) == bool(ns.edges):
        raise ConfigError("give either --embeddings DIR (a spark-cleora embed output) or --edges PATH")
    spark = spark_from_args(ns)
    t0 = time.perf_counter()
    multi = ns.labels_format == "space-multi"
    if multi:
        from .multilabel import read_multilabels

        labels, lab_counts = read_multilabels(spark, ns.labels)
    else:
        labels, lab_counts = read_labels(spark, ns.labels, node=ns.node_col, label=ns.label_col,
                                         fmt=ns.labels_format)
    report: dict[str, Any] = {"evaluation": "classify", "labels": {"path": ns.labels, **lab_counts}}
    if ns.embeddings:
        emb = spark.read.parquet(ns.embeddings).select("entity", "embedding")
        report["embeddings"] = ns.embeddings
    else:
        edges, counts = read_edges(spark, edge_source(ns))
        emb, embed_report = embed_edges(spark, edges, expansion=ns.expansion, options=embed_options(ns))
        emb = emb.localCheckpoint(eager=True)
        report["edges"] = {"paths": list(ns.edges), **counts}
        report["embedding"] = {k: embed_report["config"][k] for k in (
            "dim", "iterations", "markov", "init", "seed", "whiten", "residual", "multiscale", "columns")}
    if multi:
        from .multilabel import PREDICTION_RULE, classify_multilabel

        report["protocol"] = {"name": "one-vs-rest-logistic-regression", "test_fraction": ns.test_fraction,
                              "split_seed": ns.split_seed, "reg": ns.reg, "prediction_rule": PREDICTION_RULE,
                              "classifier": "L2 logistic regression per label, joint L-BFGS (scipy) over "
                                            "distributed gradients"}
        report["protocol"]["max_iter"] = ns.max_iter
        report["metrics"] = classify_multilabel(emb, labels, seed=ns.split_seed, test_fraction=ns.test_fraction,
                                                reg=ns.reg, max_iter=ns.max_iter)
    else:
        report["protocol"] = {"name": "logistic-regression", "test_fraction": ns.test_fraction,
                              "split_seed": ns.split_seed, "reg": ns.reg,
                              "classifier": "Spark ML LogisticRegression"}
        report["metrics"] = classify(emb, labels, seed=ns.split_seed, test_fraction=ns.test_fraction, reg=ns.reg)
    report["seconds"] = round(time.perf_counter() - t0, 2)
    write_report(ns.report, report)
    m = report["metrics"]
    suffix = f"; report: {ns.report}" if ns.report else ""
    if multi:
        print(f"classify: Micro-F1 {m['micro_f1']:.4f}  Macro-F1 {m['macro_f1']:.4f}  "
              f"({m['test_nodes']} test nodes, {m['labels']} labels, multi-label)" + suffix)
    else:
        print(f"classify: accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}  "
              f"({m['test_nodes']} test nodes, {m['classes']} classes)" + suffix)
    return 0


def register(esub: argparse._SubParsersAction) -> None:
    from ..options import add_embedding_options, add_spark_options

    p = esub.add_parser("classify", help="node classification: accuracy and macro-F1 (logistic regression)",
                        description=__doc__.split("\n\n", 1)[1].split("Why Spark ML")[0],
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", required=True, help="node labels: CSV with a header, 'node label' lines, or "
                                                   "'node l1 [l2 ...]' lines (space-multi)")
    p.add_argument("--labels-format", choices=["csv", "space", "space-multi"], default="csv",
                   help="space-multi: multi-label lines; one-vs-rest logistic regression, Micro/Macro-F1, each "
                        "test node predicted its top-k labels, k = its true label count")
    p.add_argument("--node-col", help="labels column with the node id (default: the first)")
    p.add_argument("--label-col", help="labels column with the class (default: csv the last, space the second)")
    p.add_argument("--embeddings", help="Parquet output of `spark-cleora embed` (instead of --edges)")
    add_edge_options(p, required=False)
    g = p.add_argument_group("protocol")
    g.add_argument("--split-seed", type=int, default=0, help="seed of the 80/20 node split (default 0)")
    g.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    g.add_argument("--reg", type=float, default=1e-4, help="L2 regularisation of the logistic regression")
    g.add_argument("--max-iter", type=int, default=100,
                   help="L-BFGS iterations of the multi-label fit (default 100, as Spark ML; space-multi only)")
    g.add_argument("--report", help="write the JSON report here (atomically)")
    add_embedding_options(p.add_argument_group("embedding (with --edges; as `spark-cleora embed`)"))
    add_spark_options(p)
    p.set_defaults(handler=_run)
