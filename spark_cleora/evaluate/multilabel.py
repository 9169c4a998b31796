"""Multi-label node classification (BlogCatalog protocol): one-vs-rest logistic regression, Micro/Macro-F1.

Labels: lines ``node label1 [label2 ...]`` (``--labels-format space-multi``), whitespace-separated; a node
on several lines gets the union of its labels. A node without a label is an error; blank lines are
counted in the report.

Protocol (DeepWalk / node2vec): the labelled nodes that have an embedding are split 80/20 by the same
seeded hash as single-label ``classify``; one L2-regularised binary logistic regression per label (one vs
rest) is fitted on the training nodes' standardised embeddings; each test node is predicted its top-k
labels by score, where **k is its true number of labels** (DeepWalk's ``TopKRanker`` rule, so every
test node gets exactly as many labels as it has). Micro-F1 pools the per-label true/false positive
and false negative counts; Macro-F1 is the unweighted mean of the per-label F1 over all labels of the
labels file (a label with no test node and no prediction scores 0, like scikit-learn's
``zero_division=0``).

Learner: the same model family as ``classify`` (logistic regression, L2 ``--reg 1e-4`` on standardised
features, as Spark ML's ``LogisticRegression(standardization=True)``), but not Spark ML itself: Spark ML
fits one binary model at a time, one Spark job per L-BFGS iteration, i.e. ~39 x 100 jobs for
BlogCatalog (20-60 minutes on a small box). The one-vs-rest objective is a sum of independent binary
objectives, so here all labels are fitted jointly by one L-BFGS (scipy, on the driver, over the
(d + 1) x k coefficients) whose loss and gradient come from one distributed pass per iteration
(``mapInArrow`` partial sums over the cached training rows): the same optimum, ~100 jobs in all. Only
the coefficients and per-batch partial sums (size (d + 1) x k) and the per-label counts reach the driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..errors import BadInputError
from ..runtime.session import job_description
from ..engine.vectors import from_list_array
from .splits import TEST_FRACTION, split_nodes

PREDICTION_RULE = "top-k labels by score, k = the test node's true label count (DeepWalk)"


def read_multilabels(spark: SparkSession, path: str) -> tuple[DataFrame, dict[str, int]]:
    """Distinct ``(node, label)`` strings of ``node l1 [l2 ...]`` lines, and their counts."""
    stripped = F.regexp_replace(F.col("value"), r"^\s+|\s+$", "")
    t = spark.read.text(path).select(F.split(stripped, r"\s+").alias("t"))
    t = t.withColumn("n", F.when(F.col("t")[0] == "", 0).otherwise(F.size("t")))
    c = t.agg(F.count(F.lit(1)).alias("lines"), F.sum((F.col("n") == 0).cast("long")).alias("blank"),
              F.sum((F.col("n") == 1).cast("long")).alias("unlabelled")).collect()[0]
    if c["unlabelled"]:
        raise BadInputError(f"labels {path!r}: {c['unlabelled']} line(s) with a node but no label")
    lab = (t.filter(F.col("n") >= 2)
           .select(F.col("t")[0].alias("node"), F.explode(F.slice("t", 2, F.col("n") - 1)).alias("label"))
           .distinct().localCheckpoint(eager=True))
    per_node = lab.groupBy("node").count()
    s = per_node.agg(F.count(F.lit(1)).alias("nodes"), F.sum("count").alias("pairs"),
                     F.sum((F.col("count") > 1).cast("long")).alias("multi")).collect()[0]
    if not s["nodes"]:
        raise BadInputError(f"labels {path!r}: no labelled node")
    return lab, {"lines": int(c["lines"]), "blank_lines": int(c["blank"] or 0), "labelled_nodes": int(s["nodes"]),
                 "node_label_pairs": int(s["pairs"]), "multi_label_nodes": int(s["multi"] or 0),
                 "labels": lab.select("label").distinct().count()}


def multilabel_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[float, float]:
    """(Micro-F1, Macro-F1) from per-label true positive, false positive and false negative counts."""
    tp, fp, fn = (np.asarray(a, dtype=float) for a in (tp, fp, fn))
    denom = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / denom) if denom else 0.0
    d = 2 * tp + fp + fn
    macro = float(np.mean(np.where(d > 0, 2 * tp / np.where(d > 0, d, 1), 0.0)))
    return micro, macro


def top_k_predictions(scores: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Boolean ``[n, labels]``: row i marks its ``k[i]`` highest scores (ties: the lower label index)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    pred = np.zeros(scores.shape, dtype=bool)
    take = np.arange(scores.shape[1])[None, :] < np.asarray(k)[:, None]
    rows = np.repeat(np.arange(scores.shape[0]), scores.shape[1]).reshape(scores.shape)
    pred[rows[take], order[take]] = True
    return pred


def _targets(col: pa.Array | pa.ChunkedArray, n_labels: int) -> np.ndarray:
    """Arrow ``list<int>`` of label indexes -> ``float64[n, n_labels]`` 0/1 matrix."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    y = np.zeros((len(arr), n_labels))
    lengths = np.diff(arr.offsets.to_numpy())
    y[np.repeat(np.arange(len(arr)), lengths), arr.flatten().to_numpy()] = 1.0
    return y


def ovr_loss_grad(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``[loss, grad_w (d x k, row-major), grad_c (k)]`` of the unregularised one-vs-rest logistic loss
    ``sum_i sum_l log(1 + e^z_il) - y_il z_il`` with ``z = x w + c``, summed over the rows of ``x``."""
    z = x @ w + c
    loss = np.logaddexp(0.0, z) - y * z  # stable log(1 + e^z) - y z
    r = 0.5 * (1.0 + np.tanh(0.5 * z)) - y  # d loss / dz = sigmoid(z) - y
    return np.concatenate([[loss.sum()], (x.T @ r).ravel(), r.sum(axis=0)])


def _batch_sums(df: DataFrame, fn: Callable[[pa.RecordBatch], np.ndarray], size: int) -> np.ndarray:
    """Sum over all rows of ``fn(batch)`` (a float64 vector of ``size``), computed per Arrow batch on
    the executors; only one vector per batch comes back."""

    def run(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            if b.num_rows:
                yield pa.RecordBatch.from_arrays([pa.array([fn(b).tolist()], pa.list_(pa.float64()))], names=["s"])

    total = np.zeros(size)
    for r in df.mapInArrow(run, "s array<double>").collect():
        total += np.asarray(r["s"])
    return total


def _features(b: pa.RecordBatch, dim: int, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (from_list_array(b.column("embedding"), dim).astype(np.float64) - mean) / scale


def fit_one_vs_rest(train: DataFrame, *, n_labels: int, dim: int, reg: float, max_iter: int,
                    tol: float = 1e-6) -> dict[str, Any]:
    """L2 one-vs-rest logistic regression of ``train`` (``embedding`` array<float>, ``y`` array<int>).

    Minimises ``sum_l [mean_i logloss(y_il, x_i·w_l + b_l) + reg/2 |w_l|²]`` over standardised ``x``
    with L-BFGS; returns the coefficients ``W`` (d x k), intercepts ``b``, ``mean``/``scale`` and
    convergence information.
    """
    from scipy.optimize import minimize

    spark = train.sparkSession
    with job_description(spark, "spark_cleora: multi-label standardisation"):
        def moments(b: pa.RecordBatch) -> np.ndarray:
            x = from_list_array(b.column("embedding"), dim).astype(np.float64)
            return np.concatenate([[len(x)], x.sum(axis=0), (x * x).sum(axis=0)])

        m = _batch_sums(train, moments, 1 + 2 * dim)
    n = m[0]
    mean = m[1:dim + 1] / n
    var = np.maximum(m[dim + 1:] / n - mean ** 2, 0.0) * n / max(n - 1, 1)
    scale = np.where(var > 0, np.sqrt(var), 1.0)  # a constant dimension stays 0 after centring
    evals = 0

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        nonlocal evals
        evals += 1
        w = theta[:dim * n_labels].reshape(dim, n_labels)
        c = theta[dim * n_labels:]

        def part(b: pa.RecordBatch) -> np.ndarray:
            return ovr_loss_grad(_features(b, dim, mean, scale), _targets(b.column("y"), n_labels), w, c)

        with job_description(spark, f"spark_cleora: multi-label fit, evaluation {evals}"):
            s = _batch_sums(train, part, 1 + (dim + 1) * n_labels)
        f = s[0] / n + 0.5 * reg * float(w.ravel() @ w.ravel())
        g = s[1:] / n
        g[:dim * n_labels] += reg * w.ravel()
        return f, g

    res = minimize(loss_grad, np.zeros((dim + 1) * n_labels), jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-6})
    return {"W": res.x[:dim * n_labels].reshape(dim, n_labels), "b": res.x[dim * n_labels:], "mean": mean,
            "scale": scale, "iterations": int(res.nit), "loss_evaluations": evals, "converged": bool(res.success),
            "loss": float(res.fun)}


def score_test_nodes(test: DataFrame, model: dict[str, Any], *, n_labels: int, dim: int) -> np.ndarray:
    """``[3, labels]`` summed true positive, false positive, false negative counts of the top-k rule."""
    w, c, mean, scale = model["W"], model["b"], model["mean"], model["scale"]

    def counts(b: pa.RecordBatch) -> np.ndarray:
        y = _targets(b.column("y"), n_labels).astype(bool)
        pred = top_k_predictions(_features(b, dim, mean, scale) @ w + c, y.sum(axis=1))
        return np.concatenate([(pred & y).sum(axis=0), (pred & ~y).sum(axis=0), (~pred & y).sum(axis=0)])

    with job_description(test.sparkSession, "spark_cleora: multi-label score"):
        return _batch_sums(test, counts, 3 * n_labels).reshape(3, n_labels)


def classify_multilabel(emb: DataFrame, labels: DataFrame, *, seed: int = 0, test_fraction: float = TEST_FRACTION,
                        reg: float = 1e-4, max_iter: int = 100) -> dict[str, Any]:
    """Split, fit one-vs-rest on the training nodes, score the test nodes: Micro/Macro-F1 and counts.

    ``emb``: (entity, embedding array<float>); ``labels``: (node, label) rows, several per node allowed.
    """
    t0 = time.perf_counter()
    spark = emb.sparkSession
    names = sorted(r["label"] for r in labels.select("label").distinct().collect())  # k labels, small
    index = spark.createDataFrame(list(enumerate(names)), "i int, label string")
    per_node = (labels.join(index, "label").groupBy("node")
                .agg(F.array_sort(F.collect_set("i")).alias("y")))
    # left join: labelled nodes without an embedding are counted in the report, then left out
    data = split_nodes(per_node.join(emb.withColumnRenamed("entity", "node"), "node", "left"), seed=seed,
                       test_fraction=test_fraction)
    data = data.select("node", "y", "embedding", "is_test").repartition(2).localCheckpoint(eager=True)
    known = F.col("embedding").isNotNull()
    c = data.agg(F.sum((known & ~F.col("is_test")).cast("long")).alias("train"),
                 F.sum((known & F.col("is_test")).cast("long")).alias("test"),
                 F.sum((~known).cast("long")).alias("unknown"), F.max(F.size("embedding")).alias("dim")).collect()[0]
    n_train, n_test, dim = int(c["train"] or 0), int(c["test"] or 0), int(c["dim"] or 0)
    without_embedding = int(c["unknown"] or 0)
    train, test = data.filter(known & ~F.col("is_test")), data.filter(known & F.col("is_test"))
    if not n_train or not n_test:
        raise BadInputError(f"classify: {n_train} training and {n_test} test nodes; need both")
    model = fit_one_vs_rest(train, n_labels=len(names), dim=dim, reg=reg, max_iter=max_iter)
    tp, fp, fn = score_test_nodes(test, model, n_labels=len(names), dim=dim)
    micro, macro = multilabel_f1(tp, fp, fn)
    return {"micro_f1": micro, "macro_f1": macro, "labels": len(names), "train_nodes": n_train,
            "test_nodes": n_test, "labelled_nodes_without_embedding": without_embedding,
            "test_node_labels": int(tp.sum() + fn.sum()),
            "prediction_rule": PREDICTION_RULE,
            "fit": {k: model[k] for k in ("iterations", "loss_evaluations", "converged", "loss")},
            "seconds": round(time.perf_counter() - t0, 2)}
