"""Unattended runs: quarantined bad rows, kill -9 and resume, task retries, extreme inputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import max_abs_diff, run_events, run_text
from oracle import reference
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from spark_cleora import EmbedConfig, run_embedding
from spark_cleora.cli import main
from spark_cleora.demo import sample_path
from spark_cleora.engine.start_vectors import init_for_names
from spark_cleora.engine.propagate import FAIL_SWITCH

ARGS = [sample_path(), "--input-format", "csv", "--hyperedge", "user_id", "--entity", "item",
        "--dim", "16", "--iterations", "6", "--log-level", "INFO"]


def _cli(args, **kw):
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, **kw.pop("env", {}))
    return subprocess.Popen([sys.executable, "-m", "spark_cleora.cli", "embed", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def test_quarantine_writes_each_rejected_row_with_its_rule(spark, tmp_path):
    raw = tmp_path / "in.tsv"
    raw.write_bytes(b"a b c\n\nb  c\nok\xff bad\nd e\n" + b"x " * 40 + b"y\n")
    rejects = str(tmp_path / "rejects")
    cfg = EmbedConfig(inputs=(str(raw),), input_format="cleora-tsv", columns="complex::reflexive::n", dim=4,
                      iterations=1, on_bad_rows="quarantine", rejects=rejects, max_line_length=50)
    res = run_embedding(spark, cfg, spark.read.text(str(raw)), store=None)
    want = {"empty_line": 1, "empty_entity": 1, "invalid_utf8": 1, "line_too_long": 1}
    assert res.report["rejected"] == want
    got = {r["rule"]: r["count"] for r in spark.read.parquet(rejects).groupBy("rule").count().collect()}
    assert got == want
    assert {r["entity"] for r in res.embeddings.collect()} == {"a", "b", "c", "d", "e"}


def test_kill_9_mid_run_then_rerun_resumes_with_the_same_result(spark, tmp_path):
    work, out = str(tmp_path / "work"), str(tmp_path / "out")
    args = [*ARGS, "--work-dir", work, "--output", out, "--engine", "shuffle"]  # written iteration by iteration
    proc = _cli(args, start_new_session=True)
    deadline = time.time() + 240
    while not os.path.exists(os.path.join(work, "iter=0002", "_SUCCESS")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the run never reached iteration 2"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, its JVM and the Python workers
    proc.wait()
    assert not os.path.exists(out), "a killed run must not leave an output"
    again = _cli(args)
    log, _ = again.communicate(timeout=600)
    assert again.returncode == 0, log[-3000:]
    assert "resuming from iteration" in log
    fresh = str(tmp_path / "fresh")
    assert main(["embed", *ARGS, "--output", fresh]) == 0
    assertDataFrameEqual(spark.read.parquet(out), spark.read.parquet(fresh), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("engine", ["one-task", "shuffle"])
def test_injected_task_failures_change_nothing(spark, tmp_path, engine):
    out = str(tmp_path / "out")
    args = [*ARGS, "--iterations", "2", "--output", out, "--master", "local[2,4]", "--engine", engine]  # 4 attempts
    proc = _cli(args, env={FAIL_SWITCH: "1"})
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert "injected failure" in log  # the switch really fired and Spark retried
    ref = str(tmp_path / "ref")
    assert main(["embed", *ARGS, "--iterations", "2", "--output", ref]) == 0
    assertDataFrameEqual(spark.read.parquet(out), spark.read.parquet(ref), rtol=1e-6, atol=1e-6)


def test_entity_in_every_hyperedge(spark):
    rows = [f"hub i{k} i{k + 1}" for k in range(30)]
    ours = run_text(spark, rows, "complex::reflexive::n", dim=8, iterations=3, init="fx")
    ref = reference(rows, "complex::reflexive::n", dim=8, iterations=3, init="fx")
    assert max_abs_diff(ours, ref) <= 1e-5


def test_single_user_with_all_events_and_all_duplicate_input(spark):
    # one hyperedge holding everything: every row becomes the normalised (weighted) mean of the start vectors
    events = spark.range(3000).select(F.lit("only").alias("user"), F.format_string("i%d", F.col("id") % 500).alias("item"))
    ours = run_events(spark, events, hyperedge="user", entity="item", dim=8, iterations=2)
    x0 = init_for_names([f"i{i}" for i in range(500)], 8)
    mean = x0.astype(np.float64).mean(axis=0)
    want = mean / np.linalg.norm(mean)
    assert len(ours) == 500
    for vec, _ in ours.values():
        np.testing.assert_allclose(vec, want, atol=1e-6)
    dup = spark.createDataFrame([("u", "a")] * 50, "user string, item string")
    ours = run_events(spark, dup, hyperedge="user", entity="item", dim=4, iterations=2)
    x = init_for_names(["a"], 4)[0]
    np.testing.assert_allclose(ours["a"][0], x / np.linalg.norm(x), atol=1e-6)
    assert ours["a"][1] == pytest.approx(2.0)  # D = 2·50/50


def test_a_hyperedge_too_large_for_a_worker_is_refused_up_front(spark):
    from spark_cleora.engine.graph import HyperedgeTooLargeError

    rows = [" ".join(f"e{i}" for i in range(1000)), "a b"]
    with pytest.raises(HyperedgeTooLargeError, match="1,000 distinct members.*--block-memory-gb"):
        run_text(spark, rows, "complex::reflexive::n", dim=16, iterations=1, block_memory_gb=0.0001)


def test_commas_are_part_of_entity_names_not_separators(spark):
    rows = ["a,b c", "c d,e"]  # pycleora 3 splits tab-less lines on commas and drops them here
    ours = run_text(spark, rows, "complex::reflexive::n", dim=4, iterations=1)
    assert set(ours) == {"a,b", "c", "d,e"}


def test_unparseable_timestamps_are_counted(spark):
    df = spark.createDataFrame([("u", "a", "2024-01-01 00:00:00"), ("u", "b", "not a time"), ("u", "c", None),
                                ("v", "a", "1700000000")], "user string, item string, ts string")
    cfg = EmbedConfig(input_format="dataframe", hyperedge="user", entity="item", timestamp="ts", session_gap=60,
                      dim=4, iterations=1, on_bad_rows="skip")
    res = run_embedding(spark, cfg, df, store=None)
    assert res.report["rejected"] == {"bad_timestamp": 2}
    assert res.report["hyperedges"] == 2
