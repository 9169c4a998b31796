"""Measure fold-in and combine (the numbers in docs/fold-in.md).

    python scripts/foldin_report.py quality [--data DIR] [--dim 128] [--iterations 3] [--json out.json]

``quality`` (RSC15 100k sample: ``$SPARK_CLEORA_SHARED_DATA/yoochoose-rsc15-100k`` or ``--data``):

- fold-in: 10% of the training items (seeded) are held out; embed the training sessions without their
  events, fold the held-out items in from the sessions that have them, and compare next-item HitRate@20
  and MRR@20 on the test day for pairs whose next item is held out (rank every training item by cosine
  to the previous item) against a full re-embed and against random vectors for the held-out items.
- combine: the training sessions split into two seeded random halves, each embedded, combined, and
  compared with the run on all of them (cosine per entity; next-item HitRate@20/MRR@20 on all test pairs).

The cost of a fold-in against a full embed is measured by ``scripts/bench_foldin.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _spark(cores: int = 2):
    from pyspark.sql import SparkSession

    return (SparkSession.builder.master(f"local[{cores}]").appName("foldin_report")
            .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "4")
            .config("spark.driver.memory", "6g").getOrCreate())


def _vectors(df) -> dict[str, np.ndarray]:
    return {r["entity"]: np.asarray(r["embedding"], dtype=np.float64) for r in df.select("entity", "embedding").collect()}


def next_item_scores(vecs: dict[str, np.ndarray], pairs: list[tuple[str, str]], candidates: list[str],
                     k: int = 20) -> dict[str, float]:
    """HitRate@k and MRR@k of ranking ``candidates`` by cosine to the previous item (itself excluded);
    a pair whose previous or next item has no vector is a miss."""
    have = [c for c in candidates if c in vecs]
    ix = {c: i for i, c in enumerate(have)}
    mat = np.array([vecs[c] for c in have])
    mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
    hits, rr = 0, 0.0
    for prev, nxt in pairs:
        if prev not in ix or nxt not in ix:
            continue
        s = mat @ mat[ix[prev]]
        s[ix[prev]] = -np.inf
        rank = int(np.sum(s > s[ix[nxt]]))  # 0-based
        if rank < k:
            hits += 1
            rr += 1.0 / (rank + 1)
    n = max(len(pairs), 1)
    return {"hitrate@20": round(hits / n, 4), "mrr@20": round(rr / n, 4), "pairs": len(pairs)}


def _pairs(test) -> list[tuple[str, str]]:
    test = test.sort_values(["SessionId", "Time"])
    out = []
    for _, g in test.groupby("SessionId", sort=False):
        items = g["ItemId"].tolist()
        out += [(a, b) for a, b in zip(items[:-1], items[1:]) if a != b]
    return out


def quality(args) -> dict:
    import pandas as pd

    from spark_cleora import embed
    from spark_cleora.engine.combine import combine
    from spark_cleora.config import EmbedConfig
    from spark_cleora.engine.foldin import fold_in

    data = args.data or os.path.join(os.environ.get("SPARK_CLEORA_SHARED_DATA", ""), "yoochoose-rsc15-100k")
    read = lambda f: pd.read_csv(os.path.join(data, f), sep="\t", dtype={"SessionId": str, "ItemId": str})  # noqa: E731
    train, test = read("yoochoose-clicks-100k_train_full.txt"), read("yoochoose-clicks-100k_test.txt")
    spark = _spark()
    opts = dict(hyperedge="SessionId", entity="ItemId", dim=args.dim, iterations=args.iterations)
    rng = np.random.default_rng(0)
    items = sorted(train["ItemId"].unique())
    held = set(rng.choice(items, size=len(items) // 10, replace=False).tolist())
    sessions_with_held = set(train.loc[train["ItemId"].isin(held), "SessionId"])
    reduced = train[~train["ItemId"].isin(held)]
    new_events = train[train["SessionId"].isin(sessions_with_held)]
    sdf = lambda p: spark.createDataFrame(p[["SessionId", "ItemId"]])  # noqa: E731
    t = time.perf_counter()
    full = _vectors(embed(sdf(train), **opts))
    t_full = time.perf_counter() - t
    known_df = embed(sdf(reduced), **opts).localCheckpoint()
    known = _vectors(known_df)
    cfg = EmbedConfig(input_format="dataframe", **opts)
    t = time.perf_counter()
    res = fold_in(spark, known_df, sdf(new_events), cfg, iterations=args.fold_iterations)
    folded = _vectors(res.embeddings)
    t_fold = time.perf_counter() - t
    rnd = {i: rng.standard_normal(args.dim) for i in held}
    pairs = [p for p in _pairs(test) if p[1] in held]
    out = {"dataset": "yoochoose-rsc15-100k train_full/test", "dim": args.dim, "iterations": args.iterations,
           "fold_in_iterations": args.fold_iterations, "items": len(items), "held_out_items": len(held),
           "held_out_items_in_test_pairs": len({b for _, b in pairs}),
           "reduced_events": len(reduced), "fold_in_events": len(new_events), "fold_in_report": res.report,
           "seconds_full_embed": round(t_full, 1), "seconds_fold_in": round(t_fold, 1)}
    out["held_out_targets"] = {
        "full re-embed": next_item_scores(full, pairs, items),
        "fold-in": next_item_scores({**known, **folded}, pairs, items),
        "random vectors": next_item_scores({**known, **rnd}, pairs, items),
    }
    cos = [float(folded[i] @ full[i] / np.linalg.norm(full[i])) for i in held if i in folded and i in full]
    out["cosine_fold_in_vs_full_held_out"] = {"mean": round(float(np.mean(cos)), 4),
                                              "median": round(float(np.median(cos)), 4), "n": len(cos)}
    # combine: two random halves of the sessions
    sess = sorted(train["SessionId"].unique())
    half = set(np.random.default_rng(1).choice(sess, size=len(sess) // 2, replace=False).tolist())
    a, b = train[train["SessionId"].isin(half)], train[~train["SessionId"].isin(half)]
    emb_a, emb_b = embed(sdf(a), **opts).localCheckpoint(), embed(sdf(b), **opts).localCheckpoint()
    comb = _vectors(combine([emb_a, emb_b], dim=args.dim))
    va = _vectors(emb_a)
    both = set(a["ItemId"]) & set(b["ItemId"])

    def cosines(v: dict[str, np.ndarray], names) -> dict[str, float]:
        c = [float(v[i] @ full[i] / (np.linalg.norm(v[i]) * np.linalg.norm(full[i]))) for i in names if i in v]
        return {"mean": round(float(np.mean(c)), 4), "median": round(float(np.median(c)), 4), "n": len(c)}

    all_pairs = _pairs(test)
    out["combine"] = {
        "sessions_half_a": len(half), "items_in_both_halves": len(both), "items_in_one_half": len(items) - len(both),
        "cosine_combined_vs_whole": {"items in both halves": cosines(comb, both),
                                     "items in one half": cosines(comb, set(items) - both)},
        "cosine_half_a_vs_whole": cosines(va, set(a["ItemId"]) & both),
        "next_item_all_test_pairs": {"whole": next_item_scores(full, all_pairs, items),
                                     "combined halves": next_item_scores(comb, all_pairs, items),
                                     "half a alone": next_item_scores(va, all_pairs, items)},
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["quality"])
    ap.add_argument("--data")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--fold-iterations", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    out = quality(args)
    text = json.dumps(out, indent=2, default=str)
    print(text)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
