"""The console script and the spark-submit job, end to end on the bundled sample."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
from chispa.schema_comparer import assert_schema_equality
from helpers import SampleRun
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from spark_cleora.cli import main
from spark_cleora.demo import sample_path
from spark_cleora.errors import JavaNotFoundError
from spark_cleora.storage.paths import parquet_footer_rows
from spark_cleora.runtime.session import check_java

SAMPLE_ARGS = [sample_path(), *SampleRun.ARGS]

EXPECTED_SCHEMA = T.StructType([
    T.StructField("entity", T.StringType()),
    T.StructField("column", T.StringType()),
    T.StructField("degree", T.DoubleType()),
    T.StructField("occurrences", T.DoubleType()),
    T.StructField("embedding", T.ArrayType(T.FloatType())),
])


@pytest.fixture(scope="module")
def parquet_run(sample_run):
    """The sample embedded by ``spark-cleora embed SAMPLE_ARGS`` (once per test session)."""
    return sample_run.output


def test_parquet_output_schema_report_and_no_leftovers(spark, parquet_run):
    df = spark.read.parquet(parquet_run)
    assert_schema_equality(df.schema, EXPECTED_SCHEMA, ignore_nullable=True)
    assert df.count() == 48
    lens = {len(r["embedding"]) for r in df.select("embedding").collect()}
    assert lens == {16}
    report = json.load(open(os.path.join(parquet_run, "_run.json")))
    assert report["input_rows"] == 6219 and report["rejected"] == {}
    assert report["entities"] == 48 and report["entities_written"] == 48
    assert len(report["iteration_seconds"]) == 2
    success, run_json = (os.path.join(parquet_run, f) for f in ("_SUCCESS", "_run.json"))
    assert os.stat(success).st_mtime_ns >= os.stat(run_json).st_mtime_ns, "_SUCCESS must be written last"
    parent = os.path.dirname(parquet_run)
    assert sorted(os.listdir(parent)) == ["emb"], "staging or work directories were left behind"


def test_parquet_input_rows_come_from_the_footers_and_a_miscount_is_recounted(spark, tmp_path, monkeypatch,
                                                                              caplog):
    src = str(tmp_path / "events")
    spark.read.option("header", "true").csv(sample_path()).repartition(2).write.parquet(src)
    os.makedirs(os.path.join(src, "_temporary", "0"))
    with open(os.path.join(src, "_temporary", "0", "part-x.parquet"), "w") as fh:  # Spark skips _ dirs
        fh.write("not parquet")
    assert parquet_footer_rows([src]) == 6219 == spark.read.parquet(src).count()
    assert parquet_footer_rows([src + "/*.parquet"]) is None  # a glob: Spark counts
    assert parquet_footer_rows(["s3a://bucket/events"]) is None
    # a walk that miscounts: the build's own total disagrees, Spark recounts, and the run goes on
    monkeypatch.setattr(sys.modules["spark_cleora.engine.embed"], "parquet_footer_rows", lambda inputs: 5)
    out = str(tmp_path / "emb")
    with caplog.at_level(logging.WARNING, logger="spark_cleora"):
        assert main(["embed", src, "--hyperedge", "user_id", "--entity", "item", "--dim", "8", "--iterations", "1",
                     "--output", out]) == 0
    assert "the Parquet footers say 5 rows; counting with Spark" in caplog.text
    assert json.load(open(os.path.join(out, "_run.json")))["input_rows"] == 6219


def test_config_file_with_flag_overrides(spark, parquet_run, tmp_path):
    conf = tmp_path / "embed.toml"
    conf.write_text(
        "[embed]\n"
        f"inputs = [{json.dumps(sample_path())}]\n"
        'input-format = "csv"\nhyperedge = "user_id"\nentity = "item"\ntimestamp = "ts"\n'
        "session-gap = 1800\ndim = 16\niterations = 5\n"
    )
    out = str(tmp_path / "emb")
    assert main(["embed", "--config", str(conf), "--iterations", "2", "--output", out]) == 0
    assert json.load(open(os.path.join(out, "_run.json")))["config"]["iterations"] == 2
    assertDataFrameEqual(spark.read.parquet(out), spark.read.parquet(parquet_run), rtol=1e-6, atol=1e-6)


def test_npy_and_cleora_text_exports_match_parquet(spark, parquet_run, tmp_path):
    ref = {r["entity"]: np.asarray(r["embedding"]) for r in spark.read.parquet(parquet_run).collect()}
    npy = str(tmp_path / "npy")
    assert main(["embed", *SAMPLE_ARGS, "--output", npy, "--output-format", "npy"]) == 0
    mat = np.load(os.path.join(npy, "embeddings.npy"))
    names = json.load(open(os.path.join(npy, "entities.json")))
    assert mat.shape == (48, 16) and names == sorted(ref)
    for i, n in enumerate(names):
        np.testing.assert_allclose(mat[i], ref[n], atol=1e-6)
    txt = str(tmp_path / "txt")
    assert main(["embed", *SAMPLE_ARGS, "--output", txt, "--output-format", "cleora-text"]) == 0
    lines = open(os.path.join(txt, "emb__item__item.out"), encoding="utf-8").read().splitlines()
    assert lines[0] == "48 16"
    for line in lines[1:]:
        name, occ, *vals = line.split(" ")
        assert int(occ) >= 1 and len(vals) == 16
        np.testing.assert_allclose(np.float32(vals), ref[name], atol=1e-6)


def test_failed_run_leaves_no_output_and_keeps_previous(spark, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("a b\n\nc d\n")
    out = tmp_path / "emb"
    code = main(["embed", str(bad), "--input-format", "cleora-tsv", "--columns", "complex::reflexive::x",
                 "--dim", "4", "--output", str(out)])
    assert code == 3
    assert "empty_line" in capsys.readouterr().err
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["bad.tsv"]  # no work dir either: the advised rerun may start
    assert main(["embed", str(bad), "--input-format", "cleora-tsv", "--columns", "complex::reflexive::x",
                 "--dim", "4", "--output", str(out), "--on-bad-rows", "skip"]) == 0
    previous = {f: open(out / f, "rb").read() for f in os.listdir(out) if os.path.isfile(out / f)}
    assert main(["embed", str(bad), "--input-format", "cleora-tsv", "--columns", "complex::reflexive::x",
                 "--dim", "8", "--output", str(out)]) == 3
    assert {f: open(out / f, "rb").read() for f in os.listdir(out) if os.path.isfile(out / f)} == previous
    assert json.load(open(out / "_run.json"))["rejected"] == {"empty_line": 1}
    # a directory that is not a previous output is never replaced (exit 2, untouched)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "previous.txt").write_text("keep me")
    assert main(["embed", str(bad), "--input-format", "cleora-tsv", "--columns", "complex::reflexive::x",
                 "--dim", "4", "--output", str(mine), "--on-bad-rows", "skip"]) == 2
    assert os.listdir(mine) == ["previous.txt"] and (mine / "previous.txt").read_text() == "keep me"


def test_resume_continues_from_the_last_finished_iteration(spark, tmp_path, caplog):
    work = str(tmp_path / "work")
    first = str(tmp_path / "first")
    # the shuffle engine writes every iteration; the resumed run below finishes with the one-task engine
    assert main(["embed", *SAMPLE_ARGS, "--output", first, "--checkpoint-dir", work, "--engine", "shuffle"]) == 0
    # iteration 0 (the start vectors) is part of graph/entities; then one directory per iteration
    assert all(os.path.exists(os.path.join(work, name, "_SUCCESS")) for name in ("graph/entities", "iter=0001", "iter=0002"))
    caplog.clear()
    caplog.set_level(logging.INFO, logger="spark_cleora")
    longer = [a if a != "2" else "4" for a in SAMPLE_ARGS]
    resumed = str(tmp_path / "resumed")
    assert main(["embed", *longer, "--output", resumed, "--work-dir", work]) == 0
    assert "resuming from iteration 2" in caplog.text
    fresh = str(tmp_path / "fresh")
    assert main(["embed", *longer, "--output", fresh]) == 0
    assertDataFrameEqual(spark.read.parquet(resumed), spark.read.parquet(fresh), rtol=1e-6, atol=1e-6)
    assert not os.path.exists(work), "work dir should be removed after success without --keep-work"


def test_changed_config_refuses_to_resume(spark, tmp_path, capsys):
    work = str(tmp_path / "work")
    assert main(["embed", *SAMPLE_ARGS, "--output", str(tmp_path / "a"), "--work-dir", work, "--keep-work"]) == 0
    code = main(["embed", *SAMPLE_ARGS, "--seed", "5", "--output", str(tmp_path / "b"), "--work-dir", work])
    assert code == 2
    assert "refusing to resume" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main(["embed", "x.parquet", "--output", "o"]) == 2
    assert "--hyperedge" in capsys.readouterr().err
    assert main(["embed", "x.tsv", "--input-format", "cleora-tsv", "--columns", "a b c", "--output", "o"]) == 2
    assert "one relation" in capsys.readouterr().err


def test_missing_java_is_reported_with_the_fix(monkeypatch):
    monkeypatch.setenv("JAVA_HOME", "/nonexistent/jdk")
    with pytest.raises(JavaNotFoundError, match="apt-get install -y openjdk-17"):
        check_java()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(JavaNotFoundError, match="JAVA_HOME"):
        check_java()


def test_spark_submit_job(tmp_path):
    """jobs/embed.py under spark-submit, as a cluster user runs it (new JVM, local master)."""
    import pyspark

    submit = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    out = str(tmp_path / "emb")
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    job = os.path.join(os.path.dirname(__file__), "..", "jobs", "embed.py")
    res = subprocess.run([submit, "--master", "local[2]", "--conf", "spark.ui.enabled=false", job, *SAMPLE_ARGS,
                          "--output", out], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "iteration 2/2" in res.stdout + res.stderr  # spark-submit merges the driver's stderr into stdout
    assert json.load(open(os.path.join(out, "_run.json")))["entities_written"] == 48


def test_demo_prints_output_and_neighbours(spark, tmp_path, capsys):
    out = str(tmp_path / "demo")
    assert main(["demo", "--output", out, "--dim", "16", "--iterations", "2"]) == 0
    text = capsys.readouterr().out
    assert os.path.abspath(out) in text
    assert "nearest to coffee:espresso-beans:" in text
    first = text.split("nearest to coffee:espresso-beans:")[1].splitlines()[1]
    assert "coffee:" in first  # the bundled sample's aisles come out as neighbourhoods



def test_an_early_failure_prints_its_one_line_and_no_spark_error(tmp_path):
    """A command that fails before the Python workers' warm-up job ends (a missing column): its one
    `error:` line is the last line, with no ERROR lines of Spark cancelling the warm-up at exit."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_CLEORA_JVM_CACHE": "0"}
    env.pop("SPARK_CLEORA_SPARK_LOG_LEVEL", None)
    res = subprocess.run([sys.executable, "-m", "spark_cleora.cli", "embed", sample_path(), "--input-format", "csv",
                          "--hyperedge", "user", "--entity", "item", "--output", str(tmp_path / "emb")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    assert lines[-1] == "error: events has no column(s) ['user']; it has ['user_id', 'item', 'ts']", res.stderr
    assert not [line for line in lines if "ERROR" in line], res.stderr


def test_a_newcomers_first_command_prints_no_spark_warnings(tmp_path):
    """`spark-cleora embed` on the bundled sample in a fresh process: no Spark banner or WARN line before
    the first spark_cleora line."""
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_CLEORA_JVM_CACHE": "0"}
    env.pop("SPARK_CLEORA_SPARK_LOG_LEVEL", None)
    res = subprocess.run([sys.executable, "-m", "spark_cleora.cli", "embed", *SAMPLE_ARGS, "--output",
                          str(tmp_path / "emb")], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if "spark_cleora" in line)
    # the one line left is the JVM's own (Spark 4 adds the incubating vector module; no option hides it)
    assert all(line.startswith("WARNING: Using incubator modules") for line in lines[:first]), lines[:first]
    assert not [line for line in lines if " WARN " in line], res.stderr
