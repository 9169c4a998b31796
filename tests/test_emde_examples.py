"""EMDE model examples: inputs only from strictly earlier events, against a brute-force numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from spark_cleora.emde.examples import InputSpec, build_examples
from spark_cleora.emde.features import context_features

D, W = 3, 4
L = D * W
RNG = np.random.default_rng(7)
N_ITEMS = 9
CODES = np.arange(D) * W + RNG.integers(0, W, (N_ITEMS, D))
# two customers; "a" has two events in the same second (neither is an input of the other)
EVENTS = [("a", 0, 100.0), ("a", 3, 160.0), ("a", 4, 160.0), ("a", 1, 400.0), ("a", 2, 5000.0), ("a", 5, 5030.0),
          ("b", 6, 10.0), ("b", 7, 20.0), ("b", 8, 4000.0), ("b", 0, 4100.0), ("c", 1, 50.0)]


def reference(spec: InputSpec, cutoff: float | None):
    """{(customer, target time, target item): (long, short, tgt, split)} by brute force."""
    out = {}
    for c in sorted({e[0] for e in EVENTS}):
        ev = sorted([e for e in EVENTS if e[0] == c], key=lambda e: (e[2], str(e[1])))
        for j, (_, it, tj) in enumerate(ev):
            inp = [e for e in ev if e[2] < tj]
            if not inp:
                continue
            anchor = inp[-1][2] if spec.decay_anchor == "last-event" else tj
            dec = lambda t: 0.5 ** ((anchor - t) / spec.half_life)  # noqa: E731
            long = np.zeros(L)
            for _, i2, t2 in inp:
                long[CODES[i2]] += dec(t2)
            if spec.session_gap is not None:
                k = len(inp) - 1
                while k > 0 and inp[k][2] - inp[k - 1][2] <= spec.session_gap:
                    k -= 1
                sess = inp[k:]
            else:
                sess = inp[-spec.recent:]
            short = np.zeros(L)
            for _, i2, t2 in sess:
                short[CODES[i2]] += dec(t2)
            split = "val" if cutoff is not None and tj >= cutoff else "train"
            tgt = np.zeros(L)
            for _, i2, t2 in ev[j:j + spec.target_window]:
                if split == "train" and cutoff is not None and t2 >= cutoff:
                    continue
                tgt[CODES[i2]] += 0.5 ** ((t2 - tj) / spec.half_life)
            out[(c, tj, str(it))] = (long, short, tgt, split, anchor, len(inp))
    return out


def dense(idx, val):
    x = np.zeros(L)
    x[np.asarray(idx, dtype=int)] = val
    return x


@pytest.fixture(scope="module")
def tables(spark):
    codes = spark.createDataFrame([(str(k), CODES[k].tolist()) for k in range(N_ITEMS)], "item string, codes array<int>")
    events = spark.createDataFrame(EVENTS, "user string, item int, ts double")
    return events, codes


@pytest.mark.parametrize("spec", [
    InputSpec(length=L, half_life=300.0, session_gap=1000.0, target_window=2),
    InputSpec(length=L, half_life=60.0, recent=2, decay_anchor="as-of"),
])
def test_examples_equal_numpy_reference_and_use_only_earlier_events(tables, spec):
    events, codes = tables
    ex, report = build_examples(events, codes, spec, customer="user", item="item", timestamp="ts",
                                validation_fraction=0.3)
    cutoff = report["validation_cutoff"]
    ref = reference(spec, cutoff)
    rows = ex.collect()
    assert len(rows) == len(ref) == 8  # every event but each customer's first
    for r in rows:
        long, short, tgt, split, anchor, n_in = ref[(r["customer"], r["t_target"], r["target"])]
        assert r["split"] == split and r["n_input"] == n_in and r["t"] == anchor
        np.testing.assert_allclose(dense(r["long_idx"], r["long_val"]), long, rtol=1e-6)
        np.testing.assert_allclose(dense(r["short_idx"], r["short_val"]), short, rtol=1e-6)
        np.testing.assert_allclose(dense(r["tgt_idx"], r["tgt_val"]), tgt, rtol=1e-6, atol=1e-7)
        assert r["t"] <= r["t_target"]
    # item 4 at t=160 is never an input of item 3's example at the same second (and vice versa)
    a160 = [r for r in rows if r["customer"] == "a" and r["t_target"] == 160.0]
    assert len(a160) == 2 and all(r["n_input"] == 1 for r in a160)
    assert {r["split"] for r in rows} == {"train", "val"}
    assert all(r["t_target"] < cutoff for r in rows if r["split"] == "train")


def test_sampling_is_seeded_and_capped_per_customer(tables):
    events, codes = tables
    spec = InputSpec(length=L, half_life=300.0)
    kw = dict(customer="user", item="item", timestamp="ts", examples_per_customer=2, seed=3)
    first = sorted((r["customer"], r["t_target"]) for r in build_examples(events, codes, spec, **kw)[0].collect())
    again = sorted((r["customer"], r["t_target"]) for r in build_examples(events, codes, spec, **kw)[0].collect())
    assert first == again
    assert max(sum(1 for c, _ in first if c == u) for u in "ab") == 2 and len(first) == 4


def test_prediction_rows_use_every_event(tables):
    events, codes = tables
    spec = InputSpec(length=L, half_life=300.0, recent=1)
    rows = {r["customer"]: r for r in build_examples(events, codes, spec, customer="user", item="item",
                                                      timestamp="ts", predict=True)[0].collect()}
    assert rows["a"]["n_input"] == 6 and rows["a"]["t"] == 5030.0 and rows["c"]["n_input"] == 1
    np.testing.assert_allclose(dense(rows["a"]["short_idx"], rows["a"]["short_val"]), dense(CODES[5], 1.0))


def test_context_features_are_cyclic_hour_and_weekday():
    # 1970-01-05 was a Monday; 06:00 UTC -> hour angle pi/2
    f = context_features(np.array([4 * 86400 + 6 * 3600.0]))
    np.testing.assert_allclose(f[0], [1.0, 0.0, 0.0, 1.0], atol=1e-12)


def test_events_with_unusable_weights_are_counted_and_dropped(spark, tables):
    _, codes = tables
    rows = [("a", 0, 100.0, "1"), ("a", 1, 200.0, "x"), ("a", 2, 300.0, "-1"), ("a", 3, 400.0, None),
            ("a", 4, 500.0, "2.5"), ("b", 6, 10.0, "NaN"), ("b", 7, 20.0, "1"), ("b", 8, 30.0, "1")]
    events = spark.createDataFrame(rows, "user string, item int, ts double, w string")
    spec = InputSpec(length=L, half_life=None)
    ex, report = build_examples(events, codes, spec, customer="user", item="item", timestamp="ts", weight="w")
    assert report["events_rejected_weight"] == 4 and report["events"] == 4
    got = {(r["customer"], r["target"]): dense(r["long_idx"], r["long_val"]) for r in ex.collect()}
    # a keeps items 0 (w 1) and 4 (w 2.5); b keeps 7 and 8: one example each, from the kept events only
    assert sorted(got) == [("a", "4"), ("b", "8")]
    np.testing.assert_allclose(got[("a", "4")], dense(CODES[0], 1.0))
    np.testing.assert_allclose(got[("b", "8")], dense(CODES[7], 1.0))
