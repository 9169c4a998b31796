"""EMDE recommend and similar-customers: both decoders against numpy, exact exclusion, chunking."""

from __future__ import annotations

import numpy as np
import pytest

from spark_cleora.emde.recommend import recommend
from spark_cleora.emde.score import Kernel, top_indices, top_k
from spark_cleora.emde.sketch import build_sketches
from spark_cleora.emde.similar import similar_customers

D, W, N_ITEMS, K = 4, 8, 30, 6
RNG = np.random.default_rng(1)
ITEMS = [str(k) for k in range(N_ITEMS)]  # numeric-looking ids: compared as strings everywhere
CODES = np.arange(D) * W + RNG.integers(0, W, (N_ITEMS, D))
CODES[5] = CODES[6]  # two items with identical codes: an exact tie, broken by item id
EVENTS = [(f"u{RNG.integers(0, 9)}", int(RNG.integers(0, N_ITEMS - 2))) for _ in range(120)]  # 28, 29 cold


@pytest.fixture(scope="module")
def data(spark):
    codes = spark.createDataFrame([(it, CODES[k].tolist()) for k, it in enumerate(ITEMS)],
                                  "item string, codes array<int>")
    events = spark.createDataFrame(EVENTS, "customer string, item int")
    res = build_sketches(events, codes, customer="customer", item="item")
    return codes, events, res.sketches.localCheckpoint(), res.items.localCheckpoint()


def reference(customer, scoring, *, exclude=True, candidates=None):
    counts = np.zeros(N_ITEMS)
    for _, it in EVENTS:
        counts[it] += 1
    s = np.zeros(D * W)
    seen = set()
    for c, it in EVENTS:
        if c == customer:
            s[CODES[it]] += 1
            seen.add(it)
    q = (s.reshape(D, W) / s.reshape(D, W).sum(1, keepdims=True)).ravel()
    if scoring == "geometric":
        score = np.exp(np.log(1e-6 + q[CODES]).mean(1))
    else:  # log p(i) + 0.5 * mean_j [log(eps + q) - log P(bucket)]
        p = counts / counts.sum()
        pbar = np.zeros(D * W)
        np.add.at(pbar, CODES.ravel(), np.repeat(p, D))
        with np.errstate(divide="ignore"):
            score = np.log(p) + 0.5 * (np.log(1e-6 + q[CODES]) - np.log(pbar[CODES])).mean(1)
    score = score.astype(np.float32)
    if exclude:
        score[list(seen)] = -np.inf
    if candidates is not None:
        score[[k for k in range(N_ITEMS) if ITEMS[k] not in candidates]] = -np.inf
    # ties by item id (string order), as in spark_cleora
    order = sorted((k for k in range(N_ITEMS) if np.isfinite(score[k])), key=lambda k: (-score[k], ITEMS[k]))
    return [ITEMS[k] for k in order[:K]], score[order[:K]]


@pytest.mark.parametrize("scoring", ["popularity", "geometric"])
def test_decoders_match_numpy_and_chunking_changes_nothing(data, scoring):
    codes, events, sketches, items = data
    outs = []
    for chunk_size, batch_size in ((1000, 1024), (7, 2)):
        recs, report = recommend(sketches, codes, width=W, n_codes=D, k=K, scoring=scoring, popularity=items,
                                 seen=events, chunk_size=chunk_size, batch_size=batch_size)
        outs.append({r["customer"]: (r["items"], r["scores"]) for r in recs.collect()})
    assert outs[0] == outs[1]
    assert report["candidates"] == (28 if scoring == "popularity" else 30)  # cold items have no popularity
    assert set(outs[0]) == {c for c, _ in EVENTS}
    for c, (items_, scores) in outs[0].items():
        ref_items, ref_scores = reference(c, scoring)
        assert items_ == ref_items
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_seen_items_are_never_recommended_and_candidates_restrict(spark, data):
    codes, events, sketches, items = data
    recs, _ = recommend(sketches, codes, width=W, n_codes=D, k=N_ITEMS, scoring="geometric", seen=events)
    for r in recs.collect():
        seen = {str(it) for c, it in EVENTS if c == r["customer"]}
        assert set(r["items"]) == set(ITEMS) - seen, "every unseen item, and no seen one"
    wanted = ["1", "5", "6", "29", "not-an-item"]
    cands = spark.createDataFrame([(w,) for w in wanted], "item string")
    recs, report = recommend(sketches, codes, width=W, n_codes=D, k=K, scoring="popularity", popularity=items,
                             seen=events, candidates=cands)
    assert report["candidates_without_codes"] == 1 and report["candidates_without_popularity"] == 1
    for r in recs.collect():
        assert r["items"] == reference(r["customer"], "popularity", candidates={"1", "5", "6"})[0]


def test_similar_customers_is_blockwise_cosine(data):
    _, _, sketches, _ = data
    dense = {}
    for r in sketches.collect():
        v = np.zeros(D * W)
        v[r["idx"]] = r["val"]
        b = v.reshape(D, W)
        dense[r["customer"]] = (b / np.linalg.norm(b, axis=1, keepdims=True)).ravel()
    got = {r["customer"]: (r["customers"], r["scores"])
           for r in similar_customers(sketches, width=W, n_codes=D, k=3, chunk_size=4).collect()}
    assert set(got) == set(dense)
    for c, (others, scores) in got.items():
        names = sorted(x for x in dense if x != c)
        sims = np.array([dense[c] @ dense[x] / D for x in names], dtype=np.float32)
        top = top_indices(sims, 3)
        assert others == [names[i] for i in top]
        np.testing.assert_allclose(scores, sims[top], rtol=1e-5)
        assert all(0 <= s <= 1 + 1e-6 for s in scores)


def test_top_indices_breaks_ties_by_position_and_skips_excluded():
    s = np.array([0.5, 0.9, 0.5, -np.inf, 0.5, 0.9], dtype=np.float32)
    assert top_indices(s, 4).tolist() == [1, 5, 0, 2]
    assert top_indices(s, 10).tolist() == [1, 5, 0, 2, 4]


def test_a_query_with_every_candidate_excluded_keeps_an_empty_row(spark):
    q = spark.createDataFrame([("a", [], [], ["x1", "x2", "x3"]), ("b", [], [], None)],
                              "id string, idx array<int>, val array<float>, exclude array<string>")
    c = spark.createDataFrame([(f"x{i}", [], [], float(i)) for i in range(1, 4)],
                              "id string, idx array<int>, val array<float>, prior double")
    got = sorted(map(tuple, top_k(q, c, kernel=Kernel(length=1), k=2, chunk_size=1).collect()))  # 3 chunks
    assert got == [("a", [], []), ("b", ["x3", "x2"], [3.0, 2.0])]
