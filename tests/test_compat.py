"""The supported-version check and the version shims (spark_cleora.runtime.compat): each shim's two forms give the
same values, and the end-to-end chain gives pycleora's numbers, on whatever PySpark runs the suite.

Marked ``compat``: scripts/test.sh runs these on the oldest supported PySpark (3.5) as well, where the
older forms are the ones in use; on 4.x, ``SPARK_CLEORA_COMPAT_FALLBACK=1`` forces them for comparison.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from helpers import max_abs_diff, run_text
from oracle import random_hyperedges, reference

from spark_cleora.runtime import compat

pytestmark = pytest.mark.compat


def both_forms(monkeypatch, make, spark):
    """``make()`` evaluated with the version's own calls, then with the older-version forms (once on 3.5,
    where the two are the same)."""
    monkeypatch.delenv("SPARK_CLEORA_COMPAT_FALLBACK", raising=False)
    native = make()
    if spark.version.startswith("3."):
        return native, native
    monkeypatch.setenv("SPARK_CLEORA_COMPAT_FALLBACK", "1")
    fallback = make()
    monkeypatch.delenv("SPARK_CLEORA_COMPAT_FALLBACK")
    return native, fallback


def test_supported_versions_and_the_message():
    assert [compat.spark_supported(v) for v in ("3.4.4", "3.5.0", "3.5.9", "4.0.5", "4.3.0", "4.9.1.dev0", "5.0.0")] \
        == [False, True, True, True, True, True, False]
    with pytest.raises(compat.UnsupportedEnvironmentError, match=r"^PySpark 3\.4\.4 is installed; .*3\.5 to 4\.x"):
        compat.check_spark_version("3.4.4")
    with pytest.raises(compat.UnsupportedEnvironmentError, match=r"^Python 3\.9\.18 is not supported; .*>= 3\.10"):
        compat.check_python((3, 9, 18))
    compat.check_python((3, 10, 0))
    compat.check_environment()  # this test run's own Python and PySpark


def test_is_valid_utf8_both_forms(spark, monkeypatch):
    # valid: ASCII, 2-, 3- and 4-byte sequences; invalid: bad continuation, overlong, surrogate, truncated
    cases = [("61", True), ("C3A9", True), ("E282AC", True), ("F09F9880", True), ("C328", False),
             ("C0AF", False), ("EDA080", False), ("E282", False), (None, None)]
    df = spark.createDataFrame([(i, h) for i, (h, _) in enumerate(cases)], "i int, h string")
    from pyspark.sql import functions as F

    s = df.select("i", F.unhex("h").cast("string").alias("s"))

    def run():
        return [r["ok"] for r in s.select("i", compat.is_valid_utf8("s").alias("ok")).orderBy("i").collect()]

    native = run()
    # the older form needs 3.5's replacing decoder; Spark 4 keeps it behind a legacy flag
    legacy = "spark.sql.legacy.codingErrorAction"
    if not spark.version.startswith("3."):
        spark.conf.set(legacy, "true")
    try:
        _, fallback = both_forms(monkeypatch, run, spark)
    finally:
        if not spark.version.startswith("3."):
            spark.conf.unset(legacy)
    assert native == fallback == [ok for _, ok in cases]


def test_vector_norm_and_cosine(spark):
    from pyspark.sql import functions as F

    rows = [(0, [3.0, 4.0], [4.0, 3.0]), (1, [1.0, 0.0], [0.0, 0.0]), (2, [], []), (3, [1.0, 2.0], [1.0]),
            (4, None, [1.0]), (5, [0.1, -0.7, 0.2], [-0.3, 0.5, 0.9])]
    df = spark.createDataFrame(rows, "i int, a array<float>, b array<float>")
    got = df.select("i", compat.vector_norm("a").alias("n"), compat.cosine_similarity("a", F.col("b")).alias("c")) \
        .orderBy("i").collect()
    a5, b5 = np.float32([0.1, -0.7, 0.2]).astype(np.float64), np.float32([-0.3, 0.5, 0.9]).astype(np.float64)
    assert [r["n"] for r in got[:5]] == [5.0, 1.0, 0.0, pytest.approx(5 ** 0.5), None]
    assert got[0]["c"] == pytest.approx(24 / 25, abs=1e-15)
    assert [r["c"] for r in got[1:5]] == [None, None, None, None]  # zero norm, empty, lengths differ, NULL
    assert got[5]["n"] == pytest.approx(np.linalg.norm(a5), abs=1e-15)
    assert got[5]["c"] == pytest.approx(a5 @ b5 / np.linalg.norm(a5) / np.linalg.norm(b5), abs=1e-15)


def test_string_times_and_weights_parse_on_every_version(spark):
    """String event times and weights (CSV) parse with one spelling on 3.5 and 4.x; what does not parse is null."""
    from spark_cleora.runtime.compat import try_double
    from spark_cleora.engine.hyperedges import epoch_seconds

    df = spark.createDataFrame([("1.5", "2"), ("1970-01-01 00:01:00", "x"), ("soon", None)], "t string, `w`` x` string")
    rows = df.select(epoch_seconds(df, "t").alias("t"), try_double("w` x").alias("w")).collect()
    assert [(r["t"], r["w"]) for r in rows] == [(1.5, 2.0), (60.0, None), (None, None)]


def test_grouped_arrow_both_forms(spark, monkeypatch):
    rng = np.random.default_rng(3)
    rows = [(f"k{int(k)}", float(v)) for k, v in zip(rng.integers(0, 13, 400), rng.normal(size=400))]
    df = spark.createDataFrame(rows, "k string, v double").repartition(3)

    def per_group(t: pa.Table) -> pa.Table:
        v = t.column("v").to_numpy()
        return pa.table({"k": [t.column("k")[0].as_py()], "n": [len(v)], "s": [float(np.sort(v).sum())]})

    def run():
        spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "7")  # groups span batches
        try:
            return sorted(tuple(r) for r in compat.grouped_arrow(df, ["k"], per_group, "k string, n long, s double")
                          .collect())
        finally:
            spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")

    native, fallback = both_forms(monkeypatch, run, spark)
    expected = {}
    for k, v in rows:
        expected.setdefault(k, []).append(v)
    assert native == fallback == sorted((k, len(v), float(np.sort(v).sum())) for k, v in expected.items())


ROWS = [" ".join(h) for h in random_hyperedges(60, 30, seed=7)]


@pytest.mark.parametrize("engine", ["one-task", "shuffle"])
def test_both_engines_match_pycleora(spark, monkeypatch, engine):
    ref = reference(ROWS, "complex::reflexive::node", dim=8, iterations=2, init="fx")
    native, fallback = both_forms(monkeypatch, lambda: run_text(
        spark, ROWS, "complex::reflexive::node", dim=8, iterations=2, init="fx", engine=engine, num_blocks=3), spark)
    assert max_abs_diff(native, ref) <= 1e-5
    assert max_abs_diff(fallback, native) == 0.0  # the older forms change no number


def test_similar_inspect_and_emde_chain(spark):
    from spark_cleora import embed
    from spark_cleora.emde import build_sketches, fit_coder, item_codes
    from spark_cleora.emde.recommend import recommend
    from spark_cleora.explore import summarize
    from spark_cleora.similar import similar

    events = spark.createDataFrame([(f"u{u}", i) for u, h in enumerate(random_hyperedges(40, 30, seed=5)) for i in h],
                                   "user string, item string").dropDuplicates()
    emb = embed(events, hyperedge="user", entity="item", dim=16, iterations=2, init="fx").localCheckpoint()
    vecs = {r["entity"]: np.asarray(r["embedding"], dtype=np.float64) for r in emb.collect()}

    # similar: the numpy cosine ranking of the query's neighbours
    q = sorted(vecs)[0]
    hits = [(r["entity"], r["cosine"]) for r in similar(emb, [q], k=5).orderBy("rank").collect()]
    cos = {e: float(v @ vecs[q] / np.linalg.norm(v) / np.linalg.norm(vecs[q])) for e, v in vecs.items() if e != q}
    best = sorted(cos, key=lambda e: (-cos[e], e))[:5]
    assert [e for e, _ in hits] == best
    assert max(abs(c - cos[e]) for e, c in hits) <= 1e-12

    # inspect: counts and norms
    s = summarize(emb)
    norms = [np.linalg.norm(v) for v in vecs.values()]
    assert (s["rows"], s["dim"]["max"], s["null_vectors"], s["zero_vectors"]) == (len(vecs), 16, 0, 0)
    assert abs(s["norm"]["max"] - max(norms)) <= 1e-12 and s["not_unit_length"] == 0

    # EMDE: coder -> codes -> sketches -> recommendations (never an item the customer has seen)
    coder = fit_coder([emb], depth=4, bits=3, seed=0)
    codes = item_codes(coder, [emb])
    sk = build_sketches(events, codes, customer="user", item="item")
    recs, _ = recommend(sk.sketches, codes, width=coder.width, n_codes=coder.n_codes, k=3, scoring="geometric",
                        seen=events.withColumnRenamed("user", "customer"))
    got = recs.collect()
    assert len(got) == events.select("user").distinct().count()
    seen = {(r["user"], r["item"]) for r in events.collect()}
    assert all(len(r["items"]) == 3 and not any((r["customer"], it) in seen for it in r["items"]) for r in got)
    assert all(list(r["scores"]) == sorted(r["scores"], reverse=True) for r in got)


@pytest.mark.parametrize("setup, expected", [
    ("sys.modules['pyspark'] = None",  # no PySpark importable
     "error: PySpark is not installed; spark_cleora needs Python >= 3.10 with PySpark 3.5 to 4.x: "
     "pip install 'spark-cleora[local]' for a local Spark"),
    ("import pyspark; pyspark.__version__ = '3.4.1'",
     "error: PySpark 3.4.1 is installed; spark_cleora supports Python >= 3.10 with PySpark 3.5 to 4.x"),
])
def test_console_script_stops_with_one_line_and_exit_4(setup, expected):
    import subprocess
    import sys

    code = f"import sys; {setup}; sys.argv = ['spark-cleora', 'embed']; import spark_cleora.cli"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 4 and res.stderr.startswith(expected) and res.stderr.count("\n") == 1, res.stderr
    # as a library: the same message, as an ImportError subclass for a missing PySpark
    res = subprocess.run([sys.executable, "-c", f"import sys; {setup}\ntry:\n import spark_cleora\nexcept ImportError as e: "
                          "print('ImportError', e)\nexcept RuntimeError as e: print('RuntimeError', e)"],
                         capture_output=True, text=True, timeout=120)
    kind = "ImportError" if "None" in setup else "RuntimeError"
    assert res.stdout.startswith(f"{kind} {expected[len('error: '):]}"), res.stdout + res.stderr


@pytest.mark.parametrize("job", ["embed.py", "emde.py"])
def test_spark_submit_script_stops_with_one_line_and_exit_4(job):
    import subprocess
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "jobs" / job
    code = (f"import runpy, sys; import pyspark; pyspark.__version__ = '3.4.1'; sys.argv = [{str(path)!r}, '--help']; "
            f"runpy.run_path({str(path)!r}, run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 4, res.stderr
    assert res.stderr == ("error: PySpark 3.4.1 is installed; spark_cleora supports Python >= 3.10 with PySpark "
                          "3.5 to 4.x\n")


def test_the_package_does_not_depend_on_pyspark():
    from pathlib import Path

    meta = compat.tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert not [d for d in meta["dependencies"] if d.lower().startswith("pyspark")]
    assert meta["optional-dependencies"]["local"] == ["pyspark>=3.5,<5"]
    assert meta["requires-python"] == ">=3.10"
