"""EMDE sketches: exact decay against numpy, additivity, incremental == full, counted rejections."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from spark_cleora.emde.sketch import Previous, build_sketches, parse_as_of
from spark_cleora.config import BadInputError

D, W = 3, 4
L = D * W
ITEMS = [f"i{k}" for k in range(8)]
RNG = np.random.default_rng(3)
CODES = {it: (np.arange(D) * W + RNG.integers(0, W, D)).tolist() for it in ITEMS}
T0 = 1_700_000_000


@pytest.fixture(scope="module")
def codes(spark):
    return spark.createDataFrame(list(CODES.items()), "item string, codes array<int>")


def dense(df):
    out = {}
    for r in df.collect():
        v = np.zeros(L)
        v[r["idx"]] = r["val"]
        assert r["idx"] == sorted(r["idx"]) and len(set(r["idx"])) == len(r["idx"])
        out[r["customer"]] = (v, r["n_events"], r["as_of"])
    return out


def numpy_sketch(events, customer, *, as_of, half_life, anchor=None):
    v = np.zeros(L)
    n = 0
    for c, it, t, w in events:
        if c == customer and it in CODES and t <= as_of:
            ref = as_of if anchor is None else anchor
            v[CODES[it]] += w * 0.5 ** ((ref - t) / half_life)
            n += 1
    return v, n


def random_events(n, customers, *, span=86_400 * 3, seed=0):
    rng = np.random.default_rng(seed)
    return [(customers[rng.integers(len(customers))], ITEMS[rng.integers(len(ITEMS))],
             int(T0 + rng.integers(span)), float(rng.integers(1, 4))) for _ in range(n)]


SCHEMA = "cust string, item string, ts long, w double"


def test_decay_is_exact_and_bad_rows_are_counted(spark, codes):
    good = random_events(40, ["a", "b", "c"])
    as_of = T0 + 86_400 * 2  # some events lie after it
    bad = [(None, "i1", T0, 1.0), ("a", None, T0, 1.0), ("a", "unknown", T0, 1.0), ("b", "i2", None, 1.0)]
    df = spark.createDataFrame(good + bad, SCHEMA)
    res = build_sketches(df, codes, customer="cust", item="item", timestamp="ts", weight="w",
                         half_life=7200.0, as_of=float(as_of))
    after = sum(t > as_of for *_, t, _w in good)
    assert after > 0
    assert res.report["rejected"] == {"null_customer": 1, "null_item": 1, "bad_timestamp": 1,
                                      "after_as_of": after, "unknown_item": 1}
    assert res.report["accepted"] == len(good) - after and res.report["input_rows"] == 44
    got = dense(res.sketches)
    for c in "abc":
        ref, n = numpy_sketch(good, c, as_of=as_of, half_life=7200.0)
        np.testing.assert_allclose(got[c][0], ref, rtol=2e-7, atol=0)
        assert got[c][1] == n and got[c][2] == as_of
        # every event adds its weight once to each of the D blocks
        np.testing.assert_allclose(got[c][0].reshape(D, W).sum(1), np.full(D, ref.sum() / D), rtol=1e-6)
    pop = {r["item"]: (r["n_events"], r["weight"]) for r in res.items.collect()}
    for it in ITEMS:
        evs = [w for c, i, t, w in good if i == it and t <= as_of]
        assert pop.get(it, (0, 0.0)) == ((len(evs), sum(evs)) if evs else (0, 0.0))


def test_sketch_of_a_union_is_the_sum(spark, codes):
    a = random_events(25, ["x"], seed=1)
    b = random_events(25, ["x"], seed=2)
    rows = [("A", *e[1:]) for e in a] + [("B", *e[1:]) for e in b] + [("AB", *e[1:]) for e in a + b]
    as_of = float(T0 + 86_400 * 3)
    got = dense(build_sketches(spark.createDataFrame(rows, SCHEMA), codes, customer="cust", item="item",
                               timestamp="ts", weight="w", half_life=36_000.0, as_of=as_of).sketches)
    np.testing.assert_allclose(got["AB"][0], got["A"][0] + got["B"][0], rtol=1e-6)
    assert got["AB"][1] == got["A"][1] + got["B"][1] == 50


@pytest.mark.parametrize("anchor", ["as-of", "last-event"])
def test_incremental_refresh_equals_full_recompute(spark, codes, anchor):
    events = random_events(60, ["p", "q", "r", "s"], seed=4)
    events += [("late", "i1", T0 + 86_400 * 3 + 5, 1.0)]  # a customer first seen after t1
    events += [("early", "i2", T0 + 10, 2.0)]  # a customer with no newer events
    df = spark.createDataFrame(events, SCHEMA)
    t1, t2 = float(T0 + 86_400), float(T0 + 86_400 * 4)
    kw = dict(customer="cust", item="item", timestamp="ts", weight="w", half_life=20_000.0, decay_anchor=anchor)
    first = build_sketches(df, codes, as_of=t1, **kw)
    prev_sk = first.sketches.localCheckpoint()
    prev = Previous(prev_sk, first.items.localCheckpoint(), {"cutoff": t1})
    incr = build_sketches(df, codes, as_of=t2, previous=prev, **kw)
    full = build_sketches(df, codes, as_of=t2, **kw)
    assert incr.report["rejected"]["before_previous"] == sum(e[2] <= t1 for e in events)
    got, ref = dense(incr.sketches), dense(full.sketches)
    assert set(got) == set(ref)
    for c in ref:
        np.testing.assert_allclose(got[c][0], ref[c][0], rtol=1e-6)
        assert got[c][1:] == ref[c][1:]
    if anchor == "last-event":  # decay relative to the customer's own newest event
        newest = max(e[2] for e in events if e[0] == "q")
        np.testing.assert_allclose(ref["q"][0], numpy_sketch(events, "q", as_of=t2, half_life=20_000.0,
                                                             anchor=newest)[0], rtol=2e-7)
        assert ref["q"][2] == newest
    assert sorted(map(tuple, incr.items.collect())) == sorted(map(tuple, full.items.collect()))


def test_timestamp_columns_and_as_of_strings(spark, codes):
    base = dt.datetime(2024, 3, 1, tzinfo=dt.timezone.utc)
    rows = [("a", "i1", base + dt.timedelta(hours=h), h) for h in range(5)]
    df = spark.createDataFrame([(c, i, ts, int(ts.timestamp())) for c, i, ts, _ in rows],
                               "cust string, item string, t timestamp, epoch long")
    as_of = parse_as_of(spark, "2024-03-01 03:00:00")
    assert as_of == base.timestamp() + 3 * 3600 == parse_as_of(spark, str(as_of))
    by_ts = build_sketches(df, codes, customer="cust", item="item", timestamp="t", half_life=3600.0, as_of=as_of)
    by_epoch = build_sketches(df, codes, customer="cust", item="item", timestamp="epoch", half_life=3600.0, as_of=as_of)
    a, b = dense(by_ts.sketches)["a"], dense(by_epoch.sketches)["a"]
    np.testing.assert_array_equal(a[0], b[0])
    assert a[1] == 4 and by_ts.report["rejected"] == {"after_as_of": 1}
    np.testing.assert_allclose(a[0].sum() / D, 1 + 0.5 + 0.25 + 0.125, rtol=1e-7)


def test_negative_or_missing_weights_stop_with_the_count(spark, codes):
    df = spark.createDataFrame([("a", "i1", T0, -1.0), ("a", "i2", T0, float("nan")), ("b", "i1", T0, 1.0),
                                ("b", "nope", T0, -5.0)], SCHEMA)
    with pytest.raises(BadInputError, match=r"2 events have a null, NaN, infinite or negative weight"):
        build_sketches(df, codes, customer="cust", item="item", timestamp="ts", weight="w")
