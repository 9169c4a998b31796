"""A small run's fixed costs: the graph built in the one task, the rows counted as written, the local
default filesystem known without a query, the workers' PySpark from the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_cleora.cli import main
from spark_cleora.config import EmbedConfig
from spark_cleora.engine.embed import run_embedding
from spark_cleora.engine.one_task import SMALL_INPUT_CONF
from spark_cleora.runtime.pyspark_path import prefer_installed_pyspark


@pytest.fixture(scope="module")
def events(spark):
    rng = np.random.default_rng(5)
    n = 3000
    users = rng.integers(0, 200, n)
    items = np.minimum(rng.zipf(1.4, n), 300)
    rows = [(f"u{u}", f"i{i}", float(t), float(1 + w)) for u, i, t, w in
            zip(users, items, rng.integers(0, 10_000, n), rng.integers(0, 3, n))]
    return spark.createDataFrame(rows, "user string, item string, ts double, w double").cache()


@pytest.fixture
def small_input_rows(spark):
    """Set spark.cleora.oneTask.smallInputRows for one test (unset afterwards)."""
    def set_(n: int) -> None:
        spark.conf.set(SMALL_INPUT_CONF, str(n))

    yield set_
    spark.conf.unset(SMALL_INPUT_CONF)


def _single_pass(spark, df, **opts):
    """The batch job's way: one action on the embeddings, then the report."""
    opts = {"output": "/tmp/spark_cleora_small_runs_out", **opts}  # a local output (never written here)
    cfg = EmbedConfig(input_format="dataframe", hyperedge="user", entity="item", dim=16, iterations=3, **opts)
    res = run_embedding(spark, cfg, df, store=None, single_pass=True)
    rows = res.embeddings.collect()
    return {r["entity"]: (np.asarray(r["embedding"]), r["degree"], r["occurrences"]) for r in rows}, res.finish()


@pytest.mark.parametrize("opts", [
    {},
    {"weight": "w", "dedupe": True},
    {"timestamp": "ts", "session_gap": 500.0, "markov": "symmetric"},
    {"whiten": "final", "multiscale": (1, 3), "residual": 0.3},
], ids=["plain", "weights-dedupe", "sessions-symmetric", "whiten-multiscale-residual"])
def test_graph_built_in_the_task_equals_the_graph_stage(spark, events, small_input_rows, opts):
    small, rep = _single_pass(spark, events, **opts)
    assert rep["one_task"]["graph_in_task"] is True and rep["engine"] == "one-task" and rep["num_blocks"] == 1
    assert rep["one_task"]["graph_seconds"] >= 0
    one_block, rep1 = _single_pass(spark, events, num_blocks=1, **opts)  # the graph stage, one block
    assert "graph_in_task" not in rep1["one_task"]
    assert set(small) == set(one_block)
    for k, (vec, degree, occurrences) in small.items():  # the same block, built by the same code
        np.testing.assert_array_equal(vec, one_block[k][0])
        assert (degree, occurrences) == one_block[k][1:]
    for key in ("input_rows", "rejected", "hyperedges", "memberships", "entities", "iteration_seconds"):
        assert key in rep
        if key != "iteration_seconds":
            assert rep[key] == rep1[key], key
    small_input_rows(0)  # turned off: the graph stage in several blocks, the same numbers
    staged, rep0 = _single_pass(spark, events, block_memberships=800, **opts)
    assert "graph_in_task" not in rep0["one_task"] and rep0["num_blocks"] >= 2
    # several blocks stack the hyperedges in another order, so an entity's float32 runs group other terms
    # (a float32 rounding apart); whitening divides by each component's spread, which magnifies that
    tol = 1e-5 if opts.get("whiten") else 1e-6
    assert max(float(np.abs(small[k][0] - staged[k][0]).max()) for k in small) <= tol


def test_only_inputs_up_to_the_limit_build_their_graph_in_the_task(spark, events, small_input_rows):
    small_input_rows(events.count())
    assert _single_pass(spark, events)[1]["one_task"].get("graph_in_task") is True
    small_input_rows(events.count() - 1)
    assert "graph_in_task" not in _single_pass(spark, events)[1]["one_task"]
    small_input_rows(10**9)  # not with the shuffle engine, blocks set by hand, or a budget that cannot hold it
    assert _single_pass(spark, events, engine="shuffle")[1]["engine"] == "shuffle"
    assert "graph_in_task" not in _single_pass(spark, events, num_blocks=3)[1]["one_task"]
    assert "graph_in_task" not in _single_pass(spark, events, block_memberships=1000)[1]["one_task"]
    assert "graph_in_task" not in _single_pass(spark, events, keep_work=True)[1]["one_task"]  # its graph on disk
    for output in ({"output_format": "delta"}, {"output": "s3a://bucket/emb"}, {"output": None, "output_table": "t"}):
        assert "graph_in_task" not in _single_pass(spark, events, **output)[1]["one_task"]  # published as written
    assert "graph_in_task" not in _single_pass(spark, events, block_memory_gb=0.001)[1]["one_task"]


@pytest.mark.compat
def test_rejected_rows_are_counted_and_fail_before_the_output_is_published(spark, tmp_path, capsys):
    data = tmp_path / "ev.csv"
    data.write_text("user,item\nu1,a\nu1,b\nu2,\nu2,c\nu3,a\nu3,c\n")  # u2's empty item: null in CSV
    args = ["embed", str(data), "--input-format", "csv", "--hyperedge", "user", "--entity", "item", "--dim", "4",
            "--iterations", "1"]
    out = tmp_path / "out"
    assert main([*args, "--output", str(out)]) == 3
    assert "null_entity" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["ev.csv"]  # no output, no staging, no work dir
    assert main([*args, "--output", str(out), "--on-bad-rows", "skip"]) == 0
    report = json.loads((out / "_run.json").read_text())
    assert report["one_task"]["graph_in_task"] is True
    assert (report["input_rows"], report["rejected"], report["entities_written"]) == (6, {"null_entity": 1}, 3)
    assert (report["hyperedges"], report["memberships"]) == (3, 5)
    empty = tmp_path / "none.csv"
    empty.write_text("user,item\nu1,\nu2,\n")
    assert main([*args[:1], str(empty), *args[2:], "--output", str(tmp_path / "o2"), "--on-bad-rows", "skip"]) == 3
    assert "no input rows left" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


def test_rows_written_are_counted_as_they_are_written(spark, tmp_path):
    from spark_cleora.storage.tables import write_output

    df = spark.range(1234).select(F.col("id").cast("string").alias("entity"), (F.col("id") % 3).cast("string").alias("column"))
    for parts in ((), ("column",)):
        cfg = EmbedConfig(inputs=("x",), hyperedge="u", entity="i", output=str(tmp_path / "o"), partition_by=parts)
        target = str(tmp_path / f"t{len(parts)}")
        assert write_output(df, cfg, target) == 1234 == spark.read.parquet(target).count()


def test_default_filesystem_is_local_without_a_query_only_when_nothing_can_set_it(spark, monkeypatch, tmp_path):
    from spark_cleora.runtime.session import EMBEDDED_LOCAL_CONF, is_remote
    from spark_cleora.storage import filesystem

    assert not filesystem._hadoop_defaults_only(spark)  # the suite's session: not started by get_spark
    if is_remote(spark):
        return
    monkeypatch.setattr(filesystem, "_cache", {})
    probed = filesystem.default_fs(spark)
    spark.conf.set(EMBEDDED_LOCAL_CONF, "true")  # as get_spark marks an embedded local session
    try:
        monkeypatch.setattr(filesystem, "_cache", {})
        for var in ("HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_CONF_DIR"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # an empty conf directory
        assert filesystem._hadoop_defaults_only(spark)
        assert filesystem.default_fs(spark) == probed  # what the probe's query found
        (tmp_path / "spark-defaults.conf").write_text("spark.hadoop.fs.defaultFS hdfs://nn:8020\n")
        assert not filesystem._hadoop_defaults_only(spark)
        (tmp_path / "spark-defaults.conf").unlink()
        (tmp_path / "core-site.xml").write_text("<configuration/>")
        assert not filesystem._hadoop_defaults_only(spark)
        (tmp_path / "core-site.xml").unlink()
        monkeypatch.setenv("HADOOP_CONF_DIR", str(tmp_path))
        assert not filesystem._hadoop_defaults_only(spark)
    finally:
        spark.conf.unset(EMBEDDED_LOCAL_CONF)


def test_the_daemon_is_set_only_for_workers_running_this_interpreter(monkeypatch, tmp_path):
    from spark_cleora.runtime.session import EMBEDDED_LOCAL_CONF, WORKER_DAEMON, embedded_local_conf

    monkeypatch.delenv("PYSPARK_PYTHON", raising=False)
    assert embedded_local_conf() == {EMBEDDED_LOCAL_CONF: "true", "spark.python.daemon.module": WORKER_DAEMON}
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    assert embedded_local_conf()["spark.python.daemon.module"] == WORKER_DAEMON
    other = tmp_path / "python3"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    monkeypatch.setenv("PYSPARK_PYTHON", str(other))  # another interpreter may lack spark_cleora
    assert embedded_local_conf() == {EMBEDDED_LOCAL_CONF: "true"}


def test_zips_of_the_installed_pyspark_leave_the_path_and_others_stay(tmp_path, monkeypatch):
    site = tmp_path / "site"
    lib = site / "pyspark" / "python" / "lib"
    lib.mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    (site / "py4j").mkdir()
    bundled = [str(lib / "pyspark.zip"), str(lib / "py4j-0.10.9.9-src.zip")]
    other = str(tmp_path / "opt" / "spark" / "python" / "lib" / "pyspark.zip")  # a Spark distribution's
    monkeypatch.setattr(sys, "path", [*bundled, other, "/usr/lib/python3", str(site)])
    prefer_installed_pyspark()
    assert sys.path == [other, "/usr/lib/python3", str(site)]
    monkeypatch.setattr(sys, "path", [*bundled, "/usr/lib/python3"])  # the package's own dir not on the path
    prefer_installed_pyspark()
    assert sys.path == [*bundled, "/usr/lib/python3"]


@pytest.mark.compat
def test_an_embedded_sessions_workers_import_pyspark_from_the_package(tmp_path):
    script = textwrap.dedent("""
        import pyarrow as pa
        from spark_cleora.runtime.session import get_spark

        def where(batches):
            import pyspark, sys
            for _ in batches:
                yield pa.RecordBatch.from_pydict({"f": [pyspark.__file__], "main": [sys.argv[0]]})

        spark = get_spark(master="local[1]")
        row = spark.range(1).mapInArrow(where, "f string, main string").first()
        print("WORKER", row["f"], row["main"])
    """)
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("WORKER"))
    _, pyspark_file, daemon = line.split(" ")
    import pyspark

    assert pyspark_file == pyspark.__file__ and ".zip" not in pyspark_file
    assert daemon.endswith(os.path.join("runtime", "worker_daemon.py"))
    assert "RuntimeWarning" not in out.stderr
