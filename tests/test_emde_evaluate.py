"""evaluate recommend: the leave-last-out split, the metrics and the popularity baseline, exactly."""

from __future__ import annotations

import math

import pytest

from spark_cleora.evaluate.recommend import metrics, popularity_baseline, split_last

EVENTS = [  # customer, item, time
    ("a", "x", 1.0), ("a", "y", 2.0), ("a", "z", 3.0),
    ("b", "x", 5.0), ("b", "w", 5.0),  # a tie at the newest time: broken by the hash, not the item id
    ("c", "y", 1.0),  # a single event: training only
]


@pytest.fixture(scope="module")
def events(spark):
    return spark.createDataFrame([(c, i, t, 1.0) for c, i, t in EVENTS], "c string, i string, t double, w double")


def test_leave_last_out_and_validation_split(events):
    train, test = split_last(events, holdout="last", seed=0)
    held = dict(map(tuple, test.collect()))
    assert held["a"] == "z" and held["b"] in {"x", "w"} and "c" not in held
    assert train.count() == 4 and not {(r["c"], r["i"]) for r in train.collect()} & set(held.items())
    # another seed may break b's tie the other way, never a's order
    _, test2 = split_last(events, holdout="second-to-last", seed=0)
    assert dict(map(tuple, test2.collect())) == {"a": "y"}  # b has no training event left, c too few


def test_metrics_are_exact(spark):
    test = spark.createDataFrame([("a", "z"), ("b", "w"), ("c", "q"), ("d", "v")], "c string, i string")
    recs = spark.createDataFrame([("a", ["z", "x"]), ("b", ["x", "y", "w"]), ("c", ["x"])],
                                 "customer string, items array<string>")
    m = metrics(recs, test, k=2)  # d has no list, b's hit is at rank 3 > k
    assert m["customers"] == 4
    assert m["recall@2"] == pytest.approx(1 / 4)
    assert m["ndcg@2"] == pytest.approx(1 / 4)
    assert m["mrr@2"] == pytest.approx(1 / 4)
    m3 = metrics(recs, test, k=3)
    assert m3["recall@3"] == pytest.approx(2 / 4)
    assert m3["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m3["mrr@3"] == pytest.approx((1 + 1 / 3) / 4)


def test_popularity_baseline_excludes_seen(spark, events):
    queries = spark.createDataFrame([("a",), ("b",), ("c",)], "c string")
    got = {r["customer"]: r["items"] for r in popularity_baseline(events, queries, k=2, exclude=True, n_queries=3).collect()}
    # counts: x 2, y 2, z 1, w 1 (ties by item id)
    assert got == {"a": ["w"], "b": ["y", "z"], "c": ["x", "w"]}
    got = {r["customer"]: r["items"] for r in popularity_baseline(events, queries, k=2, exclude=False, n_queries=3).collect()}
    assert got["a"] == ["x", "y"]
