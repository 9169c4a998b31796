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


def test_metrics_coverage_and_seen_share(spark):
    test = spark.createDataFrame([("a", "z"), ("b", "w")], "c string, i string")
    train = spark.createDataFrame([("a", "x"), ("a", "y"), ("b", "x"), ("b", "q"), ("c", "v")], "c string, i string")
    recs = spark.createDataFrame([("a", ["v", "x", "q"]), ("b", ["x", "y", "q"]), ("c", ["y"])],
                                 "customer string, items array<string>")
    m = metrics(recs, test, k=2, train=train)  # the test customers' lists cut to 2: a v x, b x y (c: no test)
    assert m["coverage@2"] == pytest.approx(3 / 4)  # v x y of the training items x y q v
    assert m["seen@2"] == pytest.approx(2 / 4)  # a's x, b's x
    m3 = metrics(recs, test, k=3, train=train)
    assert m3["coverage@3"] == pytest.approx(4 / 4) and m3["seen@3"] == pytest.approx(3 / 6)  # + b's q


def test_als_baseline_follows_the_blocks(spark):
    from spark_cleora.evaluate.recommend import AlsParams, als_baseline

    # two groups of customers with disjoint tastes; "a" and "d" each miss one item of their group
    rows = [(c, i) for c in "bc" for i in "xyz"] + [(c, i) for c in "ef" for i in "pqr"] \
        + [("a", "x"), ("a", "y"), ("d", "p"), ("d", "q")]
    train = spark.createDataFrame([(c, i, 0.0, 1.0) for c, i in rows], "c string, i string, t double, w double")
    queries = spark.createDataFrame([("a",), ("d",)], "c string")
    params = AlsParams(rank=4, iterations=10, reg=0.01, alpha=10.0)
    got = {r["customer"]: r["items"] for r in als_baseline(train, queries, k=2, exclude=True, n_queries=2,
                                                           params=params).collect()}
    assert got["a"][0] == "z" and got["d"][0] == "r"
    assert not {"x", "y"} & set(got["a"]) and not {"p", "q"} & set(got["d"])
    with pytest.raises(Exception, match="ALS needs"):
        AlsParams(rank=0)


def test_dataset_needs_an_explicit_data_dir(spark, capsys):
    from spark_cleora.cli import main

    assert main(["evaluate", "recommend", "--dataset", "ml-100k"]) == 2
    assert "--data-dir" in capsys.readouterr().err
