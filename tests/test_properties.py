"""Properties that must hold whatever the data: partitioning, sessions, dedupe, transient, huge hyperedges."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import max_abs_diff, run_events, run_text, spark_lines
from oracle import random_hyperedges, reference
from pyspark.sql import functions as F

from spark_cleora import EmbedConfig, embed, run_embedding
from spark_cleora.errors import BadInputError, ConfigError
from spark_cleora.engine.graph import block_keys
from spark_cleora.engine.start_vectors import init_for_names
from spark_cleora.engine.work_store import WorkStore

CLIQUE_ROWS = [" ".join(h) for h in random_hyperedges(250, 120, seed=21)]


def test_same_embeddings_whatever_the_shuffle_partitions(spark, shuffle_partitions):
    runs = []
    for n in (2, 7):
        shuffle_partitions(n)
        runs.append(run_text(spark, CLIQUE_ROWS, "complex::reflexive::node", dim=16, iterations=3, markov="left"))
    assert set(runs[0]) == set(runs[1])
    assert max_abs_diff(runs[0], runs[1]) <= 1e-6


def test_same_embeddings_whatever_the_block_count(spark):
    a = run_text(spark, CLIQUE_ROWS, "complex::reflexive::node", dim=8, iterations=2, markov="symmetric", num_blocks=1)
    b = run_text(spark, CLIQUE_ROWS, "complex::reflexive::node", dim=8, iterations=2, markov="symmetric", num_blocks=9)
    assert max_abs_diff(a, b) <= 1e-6


@pytest.mark.parametrize("num_blocks", [1, 2, 7, 115, 1000])
def test_block_keys_put_each_block_in_a_partition_of_its_own(spark, num_blocks):
    """The shuffle engine repartitions by block id: the ids from block_keys hash to distinct partitions
    (one block per task), where ids 0..n-1 would collide (a test of our copy of Spark's hash)."""
    keys = block_keys(num_blocks)
    assert len(set(keys.tolist())) == num_blocks and keys.min() >= 0
    df = spark.createDataFrame([(int(k), i) for i, k in enumerate(keys)], "block int, i int")
    placed = df.repartition(num_blocks, "block").select("i", F.spark_partition_id().alias("p")).collect()
    assert sorted((r["i"], r["p"]) for r in placed) == [(i, i) for i in range(num_blocks)]
    if num_blocks >= 7:
        naive = spark.range(num_blocks).selectExpr("cast(id as int) as block").repartition(num_blocks, "block")
        assert naive.select(F.spark_partition_id()).distinct().count() < num_blocks


def test_one_iteration_starts_from_the_hash_vectors(spark):
    """One clique {x, y, z}: W = 2/9 · 11ᵀ, D = 2/3 each, so every row of one left-Markov step is the mean of
    the three start vectors, normalised (iterations 0 is refused: it would return raw start vectors)."""
    ours = run_text(spark, ["x y z"], "complex::reflexive::n", dim=8, iterations=1, seed=3, init="siphash")
    start = init_for_names(["x", "y", "z"], 8, seed=3, method="siphash").astype(np.float64)
    want = start.sum(axis=0) / np.linalg.norm(start.sum(axis=0))
    for name in "xyz":
        np.testing.assert_allclose(ours[name][0], want, rtol=1e-6, atol=1e-7)


def _factorised_reference(hyperedges, names, dim, iterations, seed):
    """Independent numpy reference for a reflexive relation: W X = sum_h 2/|h|^2 a_h (a_hᵀ X)."""
    index = {n: i for i, n in enumerate(names)}
    x = init_for_names(names, dim, seed=seed, method="siphash").astype(np.float64)
    deg = np.zeros(len(names))
    idx = [np.array([index[e] for e in h]) for h in hyperedges]
    for m in idx:
        np.add.at(deg, m, 2.0 / len(m))
    for _ in range(iterations):
        y = np.zeros_like(x)
        for m in idx:
            np.add.at(y, m, (2.0 / len(m) ** 2) * x[m].sum(axis=0))
        y /= deg[:, None]
        x = y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-10)
    return {n: x[i] for i, n in enumerate(names)}


def test_hyperedge_of_200k_entities_is_exact_and_fast(spark):
    # 300k: more memberships than COMPILED_MIN_MEMBERSHIPS, so where numba is installed (the test extra) the
    # products run as its loops, whole rows, each range normalised as it is summed
    n = 300_000
    big = spark.range(n).select(F.lit("big").alias("user"), F.format_string("e%d", "id").alias("item"))
    small_h = random_hyperedges(40, 50, max_size=6, seed=8, names=[f"e{i}" for i in range(50)])
    small = spark.createDataFrame([(f"s{u}", e) for u, h in enumerate(small_h) for e in h], "user string, item string")
    t0 = time.perf_counter()
    emb = embed(big.unionByName(small), hyperedge="user", entity="item", dim=16, iterations=3)
    rows = emb.filter(F.col("entity").isin([f"e{i}" for i in range(60)] + [f"e{n - 1}"])).collect()
    elapsed = time.perf_counter() - t0
    names = [f"e{i}" for i in range(n)]
    want = _factorised_reference([names] + small_h, names, 16, 3, 0)
    assert len(rows) == 61
    for r in rows:
        np.testing.assert_allclose(r["embedding"], want[r["entity"]], atol=1e-5)
    assert emb.count() == n
    assert elapsed < 120, f"300k-entity hyperedge took {elapsed:.0f}s"


def test_sessions_split_at_the_gap(spark):
    # user a: t=0,10 | gap 100 | t=110,120 -> 2 sessions; user b: one session
    events = [("a", "x", 0), ("a", "y", 10), ("a", "z", 110), ("a", "x", 120), ("b", "y", 5), ("b", "z", 30)]
    df = spark.createDataFrame(events, "user string, item string, ts long")
    res = run_embedding(spark, EmbedConfig(input_format="dataframe", hyperedge="user", entity="item",
                                           timestamp="ts", session_gap=50, dim=8, iterations=2, init="fx"),
                        df, store=None)
    assert res.report["hyperedges"] == 3
    ours = {r["entity"]: (np.asarray(r["embedding"]), r["degree"]) for r in res.embeddings.collect()}
    ref = reference(["x y", "z x", "y z"], "complex::reflexive::item", dim=8, iterations=2, init="fx")
    assert max_abs_diff(ours, ref) <= 1e-5


def test_timestamp_columns_and_strings_work_like_epoch_seconds(spark):
    df = spark.createDataFrame([("a", "x", "2024-01-01 00:00:00"), ("a", "y", "2024-01-01 00:00:10"),
                                ("a", "z", "2024-01-01 01:00:00")], "user string, item string, ts string")
    as_ts = df.withColumn("ts", F.to_timestamp("ts"))
    for frame in (df, as_ts):
        res = run_embedding(spark, EmbedConfig(input_format="dataframe", hyperedge="user", entity="item",
                                               timestamp="ts", session_gap=60, dim=4, iterations=1), frame, store=None)
        assert res.report["hyperedges"] == 2


def test_multiplicity_counts_and_dedupe_drops_repeats(spark):
    events = [("u1", "a"), ("u1", "a"), ("u1", "b"), ("u2", "b"), ("u2", "c"), ("u2", "c"), ("u2", "c")]
    df = spark.createDataFrame(events, "user string, item string")
    kept = run_events(spark, df, hyperedge="user", entity="item", dim=8, iterations=2, init="fx")
    ref = reference(["a a b", "b c c c"], "complex::reflexive::item", dim=8, iterations=2, init="fx")
    assert max_abs_diff(kept, ref) <= 1e-5
    deduped = run_events(spark, df, hyperedge="user", entity="item", dim=8, iterations=2, init="fx", dedupe=True)
    ref_d = reference(["a b", "b c"], "complex::reflexive::item", dim=8, iterations=2, init="fx")
    assert max_abs_diff(deduped, ref_d) <= 1e-5


def test_transient_column_joins_the_graph_but_is_not_written(spark):
    rows = [f"h{i % 7}\t{name}" for i, name in enumerate(n for h in random_hyperedges(60, 40, seed=3) for n in h)]
    ours = run_text(spark, rows, "transient::hub node", dim=8, iterations=3, init="fx")
    ref = reference(rows, "hub node", dim=8, iterations=3, init="fx")  # pycleora 3 has no transient::
    nodes = {r.split("\t")[1] for r in rows}
    assert set(ours) == nodes
    assert max_abs_diff(ours, ref, keys=nodes) <= 1e-5


def test_bad_lines_fail_with_rule_count_and_first_line(spark):
    rows = ["u1\tp1 p2", "u2 p3", "u3\tp1  p2", "", "u4\tp4", "u5\tp5\textra"]
    with pytest.raises(BadInputError) as err:
        run_text(spark, rows, "user complex::product", dim=4, iterations=1)
    msg = str(err.value)
    assert "wrong_cell_count" in msg and "2 row(s)" in msg and "u2 p3" in msg
    res = run_embedding(spark, EmbedConfig(input_format="cleora-tsv", columns="user complex::product", dim=4,
                                           iterations=1, on_bad_rows="skip"), spark_lines(spark, rows), store=None)
    assert res.report["rejected"] == {"wrong_cell_count": 2, "empty_entity": 1, "empty_line": 1}
    assert res.report["input_rows"] == 6
    assert {r["entity"] for r in res.embeddings.collect()} == {"u1", "p1", "p2", "u4", "p4"}


def test_simple_column_with_several_entities_is_rejected_not_truncated(spark):
    with pytest.raises(BadInputError, match="several_entities_in_simple_column"):
        run_text(spark, ["u1 u2\tp1"], "user complex::product", dim=4, iterations=1)


def test_null_ids_in_events_are_counted(spark, tmp_path):
    df = spark.createDataFrame([("u1", "a"), (None, "b"), ("u1", None), ("u2", ""), ("u2", "a")],
                               "user string, item string")
    with pytest.raises(BadInputError, match="null_hyperedge"):
        run_events(spark, df, hyperedge="user", entity="item", dim=4, iterations=1)
    cfg = EmbedConfig(input_format="dataframe", hyperedge="user", entity="item", dim=4, iterations=1,
                      on_bad_rows="skip")
    res = run_embedding(spark, cfg, df, store=None)  # counts by an aggregate over the blocks
    assert res.report["rejected"] == {"null_hyperedge": 1, "null_entity": 1, "empty_entity": 1}
    # with a work store the same counts are observed while the blocks are written
    stored = run_embedding(spark, cfg, df, store=WorkStore(spark, str(tmp_path / "work")))
    counted = ("input_rows", "rejected", "hyperedges", "memberships")
    assert {k: stored.report[k] for k in counted} == {k: res.report[k] for k in counted}
    assert res.report["input_rows"] == 5 and res.report["memberships"] == 2


def test_empty_input_is_an_error(spark):
    with pytest.raises(BadInputError, match="empty"):
        run_events(spark, spark.createDataFrame([], "user string, item string"), hyperedge="user", entity="item")


def test_missing_column_is_named(spark):
    df = spark.createDataFrame([("u", "a")], "user string, item string")
    with pytest.raises(ConfigError, match="'product'"):
        run_events(spark, df, hyperedge="user", entity="product")
