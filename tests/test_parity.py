"""Parity with the reference implementation: same input, same numbers (max abs diff <= 1e-5)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import max_abs_diff, run_events, run_text
from oracle import PYCLEORA2_PYTHON, random_hyperedges, reference

TOL = 1e-5

FIX_A = ("complex::reflexive::product", ["a b c", "b c d", "a d", "e a", "c e b"])
FIX_B = ("user complex::product", ["u1\tp1 p2 p3", "u2\tp2 p3", "u3\tp1", "u1\tp4", "u2\tp4 p1"])
FIX_C = ("complex::reflexive::item", ["i1 i2 i3", "i2 i3 i4", "i4 i5", "i5 i6 i7", "i7 i8",
                                      "i8 i9 i10", "i1 i10", "i3 i6 i9", "i2 i5 i8", "i1 i4 i7 i10"])


def _bipartite(n_lines, seed, complex_left=False):
    lefts = random_hyperedges(n_lines, 40, max_size=16 if complex_left else 1, seed=seed)
    rights = random_hyperedges(n_lines, 120, max_size=16, seed=seed + 100)
    return [f"{' '.join('U' + x for x in a)}\t{' '.join(b)}" for a, b in zip(lefts, rights)]


CASES = {
    # name: (columns, rows, dim, iterations, seed, markov, init, trim)
    "A-left": (*FIX_A, 4, 3, 0, "left", "fx", 16),
    "B-symmetric": (*FIX_B, 4, 3, 0, "symmetric", "fx", 16),
    "C-left-seed9": (*FIX_C, 8, 5, 9, "left", "fx", 16),
    "clique-unicode-left-d32": ("complex::reflexive::node",
                                [" ".join(h) for h in random_hyperedges(300, 150, seed=1)], 32, 4, 5, "left", "fx", 16),
    "clique-symmetric-d8-1iter": ("complex::reflexive::node",
                                  [" ".join(h) for h in random_hyperedges(200, 80, seed=2)], 8, 1, -2, "symmetric",
                                  "fx", 16),
    "user-product-left-d16": ("user complex::product", _bipartite(250, 3), 16, 3, 1, "left", "fx", 16),
    "both-complex-symmetric": ("complex::a complex::b", _bipartite(150, 4, complex_left=True), 16, 2, 0,
                               "symmetric", "fx", 16),
    "big-hyperedges-trim-raised": ("complex::reflexive::node",
                                   [" ".join(h) for h in random_hyperedges(60, 200, max_size=90, seed=5)], 16, 3, 0,
                                   "left", "fx", 1000),
    "siphash-clique-symmetric": ("complex::reflexive::node",
                                 [" ".join(h) for h in random_hyperedges(200, 100, seed=6)], 16, 3, 3, "symmetric",
                                 "siphash", 16),
    "siphash-user-product-left": ("user complex::product", _bipartite(120, 7), 8, 4, 0, "left", "siphash", 16),
}


ENGINES = ("one-task", "shuffle")
#: the shuffle engine on a spread of the cases (tests/test_engines.py shows both engines equal on every option)
SHUFFLE_CASES = ("A-left", "B-symmetric", "user-product-left-d16", "both-complex-symmetric",
                 "big-hyperedges-trim-raised", "siphash-user-product-left")


@pytest.mark.parametrize("case, engine", [(c, "one-task") for c in CASES] + [(c, "shuffle") for c in SHUFFLE_CASES])
def test_parity_with_pycleora(spark, case, engine):
    columns, rows, dim, iters, seed, markov, init, trim = CASES[case]
    if init == "siphash" and not PYCLEORA2_PYTHON:
        pytest.skip("pycleora 2.0.0 interpreter not configured (SPARK_CLEORA_PYCLEORA2_PYTHON)")
    ref = reference(rows, columns, dim=dim, iterations=iters, seed=seed, markov=markov, init=init, trim=trim)
    ours = run_text(spark, rows, columns, dim=dim, iterations=iters, seed=seed, markov=markov, init=init,
                    engine=engine)
    assert set(ours) == set(ref)
    assert max_abs_diff(ours, ref) <= TOL
    for k, (_, deg) in ref.items():  # pycleora's degree D, not the row sum
        assert ours[k][1] == pytest.approx(deg, rel=1e-5)  # pycleora sums D in float32


def test_fixture_a_siphash_against_spec_values(spark):
    """pycleora 2.0.0 baseline left, dim 4, 3 iterations (spec §6.1), with no second interpreter needed."""
    want = np.array([[-0.76058966, 0.10518686, 0.6152271, 0.17870286],
                     [-0.7381405, 0.27936876, 0.5183807, 0.32921582],
                     [-0.7381405, 0.27936876, 0.5183807, 0.32921582],
                     [-0.72637403, 0.22190435, 0.63385236, 0.14618653],
                     [-0.7832435, 0.07294889, 0.5463202, 0.28764963]])
    ours = run_text(spark, FIX_A[1], FIX_A[0], dim=4, iterations=3, init="siphash")
    got = np.array([ours[k][0] for k in "abcde"])
    np.testing.assert_allclose(got, want, atol=TOL)
    np.testing.assert_allclose([ours[k][1] for k in "abcde"], [2.6666667, 2, 2, 1.6666667, 1.6666667], rtol=1e-6)


def test_fixture_b_degree_is_not_row_sum(spark):
    ours = run_text(spark, FIX_B[1], FIX_B[0], dim=4, iterations=1, init="fx")
    deg = {k: v[1] for k, v in ours.items()}
    assert deg == pytest.approx({"u1": 4 / 3, "p1": 3, "p2": 2, "p3": 2, "u2": 1, "u3": 1, "p4": 2})


@pytest.mark.parametrize("engine", ENGINES)
def test_event_table_parity(spark, engine):
    """Events grouped by user == pycleora on one 'complex::reflexive::item' line per user."""
    rng = np.random.default_rng(11)
    hyper = random_hyperedges(150, 90, seed=11)
    events = [(f"user{u}", item) for u, items in enumerate(hyper) for item in items]
    rng.shuffle(events)  # order of events must not matter
    df = spark.createDataFrame(events, "user string, item string")
    ref = reference([" ".join(h) for h in hyper], "complex::reflexive::item", dim=16, iterations=3, seed=4,
                    init="fx")
    ours = run_events(spark, df, hyperedge="user", entity="item", dim=16, iterations=3, seed=4, init="fx",
                      engine=engine)
    assert set(ours) == set(ref)
    assert max_abs_diff(ours, ref) <= TOL
