"""Quality of spark_cleora and of the Spark peer (Spark ML ``Word2Vec``, item2vec) under one protocol.

Both embeddings go through the project's own evaluations, so they are scored by the same code on the
same splits:

* **next-item** (``spark_cleora.evaluate.session``, session-rec's protocol) on the RSC15 100k sample,
  ``train_full`` -> ``test``: ``CLEORA-KNN`` (cosine from the prefix's last item over Cleora embeddings of
  the training sessions) against ``W2V-KNN-e<epochs>``, the same cosine kNN over Word2Vec vectors
  trained on the training sessions (each session's items ordered by time, then file order, as a
  sentence). HitRate@20 and MRR@20 over every prefix.
* **link prediction** (``spark_cleora.evaluate.linkpred``, the Cleora paper's protocol) on Facebook
  page-page: one seeded 80/20 split; spark_cleora embeds the training edges' clique expansion (one
  hyperedge per source node: the node and its neighbours), Word2Vec gets the same hyperedges as
  sentences (the node, then its neighbours in id order); both are ranked by the same code against the
  same 10,000 candidates on the same sampled test edges. MRR and HitRate@10.

Word2Vec: Spark ML defaults (window 5, step 0.025) except ``vectorSize`` 256, ``numPartitions`` = the
local cores, ``minCount`` 1 by default (``--min-count``; Spark's default 5 leaves rare items and nodes
without a vector, so the two methods would not rank the same test cases), one run per ``--epochs`` value
(``maxIter``). Its vectors are scaled to unit length (the kNN scores are dot products).

    python scripts/peer_report.py --data "$SPARK_CLEORA_SHARED_DATA" --epochs 1,5 --json peer.json \\
        --conf spark.driver.memory=4g
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from spark_cleora.evaluate.graphs import EdgeSource, read_edges  # noqa: E402
from spark_cleora.evaluate.linkpred import rank_test_edges, run_linkpred, split_edges  # noqa: E402
from spark_cleora.evaluate.session import evaluate_session, format_table, load_methods, read_events  # noqa: E402
from spark_cleora.evaluate.session_embedding import cleora_knn  # noqa: E402
from spark_cleora.evaluate.session_methods import METHODS, MethodContext, register_method  # noqa: E402

RSC15 = "yoochoose-rsc15-100k"
FACEBOOK = "facebook-page-page-musae/musae_facebook_edges.csv"


def word2vec_embedding(sentences: DataFrame, *, dim: int, epochs: int, min_count: int, partitions: int,
                       seed: int = 0) -> DataFrame:
    """(entity, embedding array<float>, unit length) of Word2Vec trained on ``sentences.items``."""
    from pyspark.ml.feature import Word2Vec
    from pyspark.ml.functions import vector_to_array

    model = Word2Vec(vectorSize=dim, maxIter=epochs, minCount=min_count, numPartitions=partitions, seed=seed,
                     inputCol="items", outputCol="_v").fit(sentences)
    v = model.getVectors().select(F.col("word").alias("entity"), vector_to_array("vector", "float32").alias("e"))
    norm = F.sqrt(F.aggregate("e", F.lit(0.0).cast("double"), lambda acc, x: acc + x * x))
    return v.select("entity", F.transform("e", lambda x: (x / F.greatest(norm, F.lit(1e-12))).cast("float"))
                    .alias("embedding"))


def register_word2vec_methods(epochs: list[int], *, dim: int, min_count: int, partitions: int) -> list[str]:
    """``W2V-KNN-e<n>`` session methods: CLEORA-KNN's cosine kNN over Word2Vec vectors of the training
    sessions (the training time is part of the method's seconds)."""
    load_methods()
    names = []
    for n in epochs:
        name = f"W2V-KNN-e{n}"
        names.append(name)
        if name in METHODS:
            continue

        def method(ctx: MethodContext, n: int = n) -> DataFrame:
            order = F.sort_array(F.collect_list(F.struct("pos", "item")))
            sentences = ctx.train.groupBy("session").agg(order.alias("s")).select(F.col("s.item").alias("items"))
            path = f"{ctx.work_dir}/word2vec"
            word2vec_embedding(sentences, dim=dim, epochs=n, min_count=min_count, partitions=partitions) \
                .write.mode("overwrite").parquet(path)
            emb = ctx.spark.read.parquet(path)
            return cleora_knn(dataclasses.replace(ctx, embedding=lambda: emb))

        register_method(name, params={"from": "last item", "similarity": "cosine of Word2Vec vectors",
                                      "word2vec": f"maxIter {n}, window 5, minCount {min_count}, dim {dim}"})(method)
    return names


def next_item(spark, root: Path, *, epochs: list[int], dim: int, min_count: int, partitions: int,
              iterations: int) -> dict[str, Any]:
    d = root / RSC15
    cols = {"fmt": "tsv", "session": "SessionId", "item": "ItemId", "timestamp": "Time"}
    train = read_events(spark, [str(d / "yoochoose-clicks-100k_train_full.txt")], **cols)
    test = read_events(spark, [str(d / "yoochoose-clicks-100k_test.txt")], **cols)
    names = register_word2vec_methods(epochs, dim=dim, min_count=min_count, partitions=partitions)
    work = tempfile.mkdtemp(prefix="spark_cleora_peer_")
    try:
        report = evaluate_session(spark, train, test, work_dir=work, k=20, methods=("CLEORA-KNN", *names),
                                  embed_opts={"dim": dim, "iterations": iterations})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(format_table(report), flush=True)
    return report


def link_prediction(spark, root: Path, *, epochs: list[int], dim: int, min_count: int, partitions: int,
                    iterations: int, seed: int = 0) -> dict[str, Any]:
    edges, _ = read_edges(spark, EdgeSource(paths=(str(root / FACEBOOK),), format="csv"))
    edges = edges.localCheckpoint(eager=True)
    out: dict[str, Any] = {"spark_cleora": run_linkpred(spark, edges, expansion="clique",
                                                        options={"dim": dim, "iterations": iterations}, seed=seed)}
    print(json.dumps({"linkpred spark_cleora": out["spark_cleora"]["metrics"],
                      "seconds": out["spark_cleora"]["seconds"]}), flush=True)
    train, test = split_edges(edges, seed=seed)
    train, test = train.localCheckpoint(eager=True), test.localCheckpoint(eager=True)
    # the clique expansion's hyperedges (spark_cleora's input) as sentences: the node, then its neighbours
    sentences = train.groupBy("src").agg(F.array_sort(F.collect_list("dst")).alias("d")).select(
        F.concat(F.array("src"), "d").alias("items"))
    for n in epochs:
        t0 = time.perf_counter()
        emb = word2vec_embedding(sentences, dim=dim, epochs=n, min_count=min_count,
                                 partitions=partitions).localCheckpoint(eager=True)
        t_embed = time.perf_counter() - t0
        metrics = rank_test_edges(emb, train, test, seed=seed)
        out[f"word2vec-e{n}"] = {"metrics": metrics, "seconds": {"embed": round(t_embed, 2),
                                                                 "total": round(time.perf_counter() - t0, 2)}}
        print(json.dumps({f"linkpred word2vec-e{n}": metrics, "seconds": out[f"word2vec-e{n}"]["seconds"]}),
              flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("SPARK_CLEORA_SHARED_DATA"),
                    help="directory holding the datasets (default: $SPARK_CLEORA_SHARED_DATA)")
    ap.add_argument("--epochs", default="1,5", help="comma-separated Word2Vec maxIter values")
    ap.add_argument("--min-count", type=int, default=1, help="Word2Vec minCount (default 1: every item a vector)")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--iterations", type=int, default=4, help="spark_cleora iterations (default 4)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--only", choices=["next-item", "linkpred"])
    ap.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="a Spark conf (repeatable)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not args.data:
        raise SystemExit("give --data DIR (or set SPARK_CLEORA_SHARED_DATA): the directory holding the datasets")
    from spark_cleora.runtime.session import get_spark

    spark = get_spark(master=f"local[{args.cores}]", conf=dict(c.split("=", 1) for c in args.conf))
    epochs = [int(e) for e in args.epochs.split(",")]
    opts = {"epochs": epochs, "dim": args.dim, "min_count": args.min_count, "partitions": args.cores,
            "iterations": args.iterations}
    results: dict[str, Any] = {"args": vars(args)}
    if args.only != "linkpred":
        results["next_item"] = next_item(spark, Path(args.data), **opts)
    if args.only != "next-item":
        results["linkpred"] = link_prediction(spark, Path(args.data), **opts)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    spark.stop()


if __name__ == "__main__":
    main()
