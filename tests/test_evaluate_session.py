"""``evaluate session``: the protocol's prefixes, each baseline on a hand-computed example, no leakage."""

from __future__ import annotations

import math

import pytest

from spark_cleora.evaluate.session import evaluate_session, session_prefixes, with_positions
from spark_cleora.evaluate.session_methods import METHODS, MethodContext, keep_top

# Training sessions: s1 = A B C, s2 = A C, s3 = B A B (times increase within and across sessions).
TRAIN = [("s1", "A", 1.0), ("s1", "B", 2.0), ("s1", "C", 3.0),
         ("s2", "A", 10.0), ("s2", "C", 11.0),
         ("s3", "B", 20.0), ("s3", "A", 21.0), ("s3", "B", 22.0)]


def _events(spark, rows):
    from pyspark.sql import functions as F

    df = spark.createDataFrame(rows, "session string, item string, t double")
    return df.withColumn("_row", F.monotonically_increasing_id())


def _ctx(spark, prefixes, k=3, **options):
    import spark_cleora.evaluate.session as s

    s.load_methods()
    train = with_positions(_events(spark, TRAIN))
    rows = [(f"p{n}", items, [float(i) for i in range(len(items))]) for n, items in enumerate(prefixes)]
    pdf = spark.createDataFrame(rows, "prefix_id string, items array<string>, times array<double>")
    return MethodContext(spark=spark, train=train, prefixes=pdf, k=k, work_dir="/nonexistent",
                         options={k_: str(v) for k_, v in options.items()})


def _lists(ctx, name):
    out = keep_top(METHODS[name].fn(ctx), ctx.k).orderBy("prefix_id", "rank").collect()
    lists: dict[str, list] = {}
    for r in out:
        lists.setdefault(r["prefix_id"], []).append((r["item"], round(r["score"], 6)))
    return lists


def test_pop(spark):
    # A: 3 events, B: 3, C: 2 -> A before B by id
    assert _lists(_ctx(spark, [["C"]]), "POP") == {"p0": [("A", 3.0), ("B", 3.0), ("C", 2.0)]}


def test_association_rules(spark):
    # ordered pairs of distinct positions: A->B 1 (s1) + 2 (s3); A->C 1 + 1; B->A 1 + 2; B->B 2 (s3); B->C 1
    lists = _lists(_ctx(spark, [["C", "A"], ["B"]]), "AR")
    assert lists == {"p0": [("B", 3.0), ("C", 2.0)], "p1": [("A", 3.0), ("B", 2.0), ("C", 1.0)]}


def test_sequential_rules(spark):
    # forward pairs, weight 1/distance: A->B 1 (s1) + 1 (s3); A->C 1/2 (s1) + 1 (s2); B->C 1; B->A 1; B->B 1/2
    lists = _lists(_ctx(spark, [["A"], ["B"]]), "SR")
    assert lists == {"p0": [("B", 2.0), ("C", 1.5)], "p1": [("A", 1.0), ("C", 1.0), ("B", 0.5)]}
    # a window of 1 step drops the s1 pair A->C at distance 2 and s3's B->B
    lists = _lists(_ctx(spark, [["A"], ["B"]], sr_steps=1), "SR")
    assert lists == {"p0": [("B", 2.0), ("C", 1.0)], "p1": [("A", 1.0), ("C", 1.0)]}


def test_vsknn(spark):
    # prefix B A: w(B) = 1/2, w(A) = 2/2, ||w|| = sqrt(1.25); dot with s1 {A,B,C} 1.5, s2 {A,C} 1, s3 {A,B} 1.5
    norm = math.sqrt(1.25)
    s1, s2, s3 = 1.5 / (norm * math.sqrt(3)), 1.0 / (norm * math.sqrt(2)), 1.5 / (norm * math.sqrt(2))
    r = lambda x: round(x, 6)  # noqa: E731
    # prefix A B A: an item's last position counts, B 2/3, A 3/3; dots 5/3 (s1), 1 (s2), 5/3 (s3)
    w = math.sqrt(1 + 4 / 9)
    t1, t2, t3 = (5 / 3) / (w * math.sqrt(3)), 1 / (w * math.sqrt(2)), (5 / 3) / (w * math.sqrt(2))
    assert _lists(_ctx(spark, [["B", "A"], ["A", "B", "A"]]), "V-SKNN") == {
        "p0": [("A", r(s1 + s2 + s3)), ("B", r(s1 + s3)), ("C", r(s1 + s2))],
        "p1": [("A", r(t1 + t2 + t3)), ("B", r(t1 + t3)), ("C", r(t1 + t2))]}
    # 2 neighbours: s3 and s1 (the most similar); A and B tie -> by id
    assert _lists(_ctx(spark, [["B", "A"]], vsknn_k=2), "V-SKNN") == {
        "p0": [("A", r(s3 + s1)), ("B", r(s3 + s1)), ("C", r(s1))]}
    # a sample of the 2 most recent sessions: s3 (ends at 22) and s2 (11)
    assert _lists(_ctx(spark, [["B", "A"]], vsknn_sample=2), "V-SKNN") == {
        "p0": [("A", r(s3 + s2)), ("B", r(s3)), ("C", r(s2))]}


def test_prefixes_follow_the_protocol(spark):
    # X: A B Z(unknown) C -> A B C (2 prefixes); Y: A Z -> A only -> dropped; W: C C -> 1 prefix
    test = _events(spark, [("X", "A", 5.0), ("X", "Z", 7.0), ("X", "B", 6.0), ("X", "C", 8.0),
                           ("Y", "A", 1.0), ("Y", "Z", 2.0), ("W", "C", 3.0), ("W", "C", 3.0)])
    prefixes, targets = session_prefixes(_events(spark, TRAIN), test)
    assert "target" not in prefixes.columns
    got = {r["prefix_id"]: (r["items"], r["times"]) for r in prefixes.collect()}
    assert got["X#1"] == (["A"], [5.0])
    assert got["X#2"] == (["A", "B"], [5.0, 6.0])
    assert got["W#1"] == (["C"], [3.0])
    assert set(got) == {"X#1", "X#2", "W#1"}
    assert {r["prefix_id"]: r["target"] for r in targets.collect()} == {"X#1": "B", "X#2": "C", "W#1": "C"}


def test_no_method_sees_events_after_its_prefix(spark, tmp_path):
    """Methods get the prefixes only; changing what follows a prefix in the test set changes none of its lists."""
    from pyspark.sql import functions as F

    train = _events(spark, TRAIN)
    a = _events(spark, [("X", "A", 30.0), ("X", "B", 31.0), ("X", "C", 32.0), ("Y", "B", 40.0), ("Y", "A", 41.0)])
    b = _events(spark, [("X", "A", 30.0), ("X", "B", 31.0), ("X", "A", 32.0), ("Y", "B", 40.0), ("Y", "C", 41.0)])
    methods = ("POP", "AR", "SR", "V-SKNN", "CLEORA-KNN", "EMDE")
    options = {"emde_depth": "2", "emde_bits": "1"}
    report = evaluate_session(spark, train, a, work_dir=str(tmp_path / "a"), k=3, methods=methods,
                              embed_opts={"dim": 8, "iterations": 1}, options=options)
    assert report["predictions"] == 3 and list(report["methods"]) == list(methods)
    # POP lists A B C for everyone; targets B (X#1), C (X#2), A (Y#1)
    assert report["methods"]["POP"]["HR@3"] == pytest.approx(1.0)
    assert report["methods"]["POP"]["MRR@3"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert report["methods"]["POP"]["coverage@3"] == pytest.approx(1.0)

    # the same prefixes taken from test set b, given to each method with the same training data and embedding
    positioned = spark.read.parquet(str(tmp_path / "a" / "train"))
    prefixes_b, _ = session_prefixes(positioned, b)
    assert sorted(prefixes_b.columns) == ["items", "prefix_id", "session", "t", "times"]
    emb = spark.read.parquet(str(tmp_path / "a" / "embedding"))
    for i, m in enumerate(methods):
        seen_a = spark.read.parquet(str(tmp_path / "a" / f"method_{i}" / "lists")).collect()
        ctx = MethodContext(spark=spark, train=positioned, prefixes=prefixes_b.select("prefix_id", "items", "times"),
                            k=3, work_dir=str(tmp_path / "b" / m), options=options, embedding=lambda: emb)
        seen_b = keep_top(METHODS[m].fn(ctx).select("prefix_id", "item", F.col("score").cast("double")), 3).collect()
        lists = [sorted((r["prefix_id"], r["rank"], r["item"], round(r["score"], 5)) for r in rows)
                 for rows in (seen_a, seen_b)]
        assert lists[0] == lists[1], m
        assert {p for p, *_ in lists[0]} == {"X#1", "X#2", "Y#1"}, m


def test_cli_refuses_unknown_methods_and_bad_options(spark, tmp_path, capsys):
    from spark_cleora.cli import main

    path = tmp_path / "ev.tsv"
    path.write_text("s\ti\tt\n1\tA\t1\n1\tB\t2\n")
    base = ["evaluate", "session", "--train", str(path), "--test", str(path), "--session", "s", "--item", "i",
            "--timestamp", "t"]
    assert main([*base, "--methods", "NOPE"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main([*base, "--option", "novalue"]) == 2
    assert main([*base, "--session", "missing"]) == 2


def test_emde_model_sources_options(spark, tmp_path):
    """EMDE-MODEL: ``model_iterations`` adds one Cleora source per count, ``model_random_source`` the
    random source; the coder the model is trained with records them, and a bad count is refused."""
    import json

    pytest.importorskip("torch")
    from spark_cleora.errors import ConfigError

    items = [chr(ord("A") + i) for i in range(8)]
    rows = [(f"s{s}", items[(s + j * (1 + s % 3)) % 8], 100.0 * s + j) for s in range(40) for j in range(4)]
    train = _events(spark, rows)
    test = _events(spark, [("X", "A", 9000.0), ("X", "B", 9001.0), ("X", "C", 9002.0), ("Y", "D", 9100.0),
                           ("Y", "E", 9101.0)])
    options = {"emde_depth": "2", "emde_bits": "2", "model_hidden": "8", "model_layers": "1", "model_epochs": "1",
               "model_batch_size": "16", "model_iterations": "1", "model_random_source": "1"}
    report = evaluate_session(spark, train, test, work_dir=str(tmp_path / "r"), k=3, methods=("EMDE-MODEL",),
                              embed_opts={"dim": 8, "iterations": 2}, options=options)
    m = report["methods"]["EMDE-MODEL"]
    assert report["predictions"] == 3 and 0.0 <= m["MRR@3"] <= m["HR@3"] <= 1.0
    manifest = json.loads((tmp_path / "r" / "method_0" / "coder" / "manifest.json").read_text())
    assert [s["name"] for s in manifest["sources"]] == ["train_embeddings", "train_embeddings_1_iterations",
                                                         "<random>"]
    assert manifest["n_codes"] == 6 and (tmp_path / "r" / "embedding_1").is_dir()
    assert "embedding_1" in report["seconds"]
    with pytest.raises(ConfigError, match="model_iterations"):
        evaluate_session(spark, train, test, work_dir=str(tmp_path / "bad"), k=3, methods=("EMDE-MODEL",),
                         embed_opts={"dim": 8, "iterations": 2}, options={**options, "model_iterations": "0"})
