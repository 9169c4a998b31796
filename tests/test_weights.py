"""--weight: a real weight per event generalises Cleora's multiplicity, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import max_abs_diff, run_events
from spark_cleora import embed
from spark_cleora.config import BadInputError
from spark_cleora.engine.start_vectors import init_for_names

EVENTS = [  # (user, item, weight)
    ("u1", "a", 0.5), ("u1", "b", 2.0), ("u1", "c", 1.0),
    ("u2", "b", 3.0), ("u2", "d", 0.25),
    ("u3", "a", 1.5), ("u3", "c", 1.0), ("u3", "d", 4.0), ("u3", "a", 0.5),  # a twice: weights add up
    ("u4", "e", 1.0), ("u4", "b", 1.0),
]


def weighted_reference(events, *, dim, iterations, markov):
    """Dense numpy Cleora on the weighted incidence: a_h[x] = sum of x's event weights in h."""
    names = sorted({e for _, e, _ in events})
    idx = {n: i for i, n in enumerate(names)}
    users = sorted({u for u, _, _ in events})
    a = np.zeros((len(users), len(names)))
    for u, e, w in events:
        a[users.index(u), idx[e]] += w
    size = a.sum(axis=1)
    w_mat = sum(2.0 * np.outer(row, row) / s**2 for row, s in zip(a, size))
    d = (2.0 * a / size[:, None]).sum(axis=0)
    m = w_mat / d[:, None] if markov == "left" else w_mat / np.sqrt(np.outer(d, d))
    x = init_for_names(names, dim).astype(np.float64)
    for _ in range(iterations):
        x = m @ x
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-10)
    return {n: (x[i].astype(np.float32), d[i]) for n, i in idx.items()}


@pytest.mark.parametrize("markov", ["left", "symmetric"])
def test_weighted_events_follow_the_weighted_matrix(spark, markov):
    df = spark.createDataFrame(EVENTS, "user string, item string, w double")
    ours = run_events(spark, df, hyperedge="user", entity="item", weight="w", dim=8, iterations=3, markov=markov)
    ref = weighted_reference(EVENTS, dim=8, iterations=3, markov=markov)
    assert max_abs_diff(ours, ref) < 1e-5
    for name, (_, degree) in ref.items():
        assert ours[name][1] == pytest.approx(degree, rel=1e-12)


def test_weight_two_equals_the_event_twice(spark):
    weighted = spark.createDataFrame([("u1", "a", 2.0), ("u1", "b", 1.0), ("u2", "b", 1.0), ("u2", "c", 1.0)],
                                     "user string, item string, w double")
    repeated = spark.createDataFrame([("u1", "a"), ("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c")],
                                     "user string, item string")
    a = run_events(spark, weighted, hyperedge="user", entity="item", weight="w", dim=8, iterations=2)
    b = run_events(spark, repeated, hyperedge="user", entity="item", dim=8, iterations=2)
    assert max_abs_diff(a, b) < 1e-6


def test_bad_weights_are_counted_or_refused(spark, tmp_path):
    rows = [("u1", "a", "1.5"), ("u1", "b", None), ("u1", "c", "-1"), ("u2", "a", "0"), ("u2", "b", "NaN"),
            ("u2", "c", "heavy"), ("u2", "d", "2"), ("u3", "a", "Infinity"), ("u3", "d", "1")]
    df = spark.createDataFrame(rows, "user string, item string, w string")
    with pytest.raises(BadInputError, match=r"6 row\(s\) break rule 'bad_weight'"):
        embed(df, hyperedge="user", entity="item", weight="w", dim=4, iterations=1).collect()
    out = embed(df, hyperedge="user", entity="item", weight="w", dim=4, iterations=1, on_bad_rows="skip",
                work_dir=str(tmp_path / "work"))
    assert sorted(r["entity"] for r in out.collect()) == ["a", "d"]
    report = __import__("json").load(open(tmp_path / "work" / "manifest.json"))
    assert report["graph"]["rejected"] == {"bad_weight": 6}
