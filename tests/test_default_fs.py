"""Scheme-less paths on a non-local default filesystem (``fs.defaultFS``), as Spark reads them.

A viewfs mount table stands in for HDFS: ``viewfs://lakeXXXX/lake`` is a directory of the test's
tmp dir, and ``/lake/...`` (no scheme) means that filesystem, not the driver's ``/lake``. The default
filesystem is set on the shared session at runtime (Spark applies session settings to every read and
write), under a fresh authority per test so that Hadoop's cached filesystem objects never mix.

The quick ones are marked ``compat`` (also run on PySpark 3.5, whose errors the probe reads too).
"""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

from spark_cleora.cli import main
from spark_cleora.storage.filesystem import default_fs, path_state, qualify
from test_data_safety import ARGS, EVENTS, _tree  # the same tiny run


@contextlib.contextmanager
def default_fs_on(spark, root):
    """``fs.defaultFS`` = a viewfs whose ``/lake`` is the local directory ``root``."""
    name = "lake" + uuid.uuid4().hex[:8]
    keys = {"fs.defaultFS": f"viewfs://{name}/", f"fs.viewfs.mounttable.{name}.link./lake": root.as_uri()}
    for k, v in keys.items():
        spark.conf.set(k, v)
    try:
        yield f"viewfs://{name}"
    finally:
        for k in keys:
            spark.conf.unset(k)


@pytest.fixture
def lake(tmp_path):
    root = tmp_path / "lakeroot"
    (root / "events").mkdir(parents=True)
    (root / "events" / "ev.csv").write_text(EVENTS)
    return root


@pytest.mark.compat
def test_default_fs_is_learned_through_spark(spark, lake):
    assert default_fs(spark)[0] == "file:"
    assert qualify(spark, "/lake/x") == "/lake/x" and qualify(spark, "rel/x") == "rel/x"  # local: as given
    with default_fs_on(spark, lake) as fs:
        root, cwd = default_fs(spark)
        assert root == fs and cwd.startswith(fs + "/")
        assert qualify(spark, "/lake/x") == fs + "/lake/x"
        assert qualify(spark, "rel/x") == cwd + "/rel/x"
        assert qualify(spark, "file:/tmp/x") == "file:/tmp/x" and qualify(spark, "s3a://b/x") == "s3a://b/x"
        assert path_state(spark, "/lake/events") == "dir"
        assert path_state(spark, "/lake/events/ev.csv") == "file"
        assert path_state(spark, "/lake/nope") == "missing"
        (lake / "empty").mkdir()
        (lake / "hidden").mkdir()
        (lake / "hidden" / ".keep").write_text("x")
        assert path_state(spark, "/lake/empty") == "empty"
        assert path_state(spark, "/lake/hidden") == "dir"  # a hidden entry makes a directory someone's
    assert default_fs(spark)[0] == "file:"


def test_embed_and_emde_fit_with_scheme_less_paths(spark, lake, tmp_path):
    ref = tmp_path / "ref"
    assert main(["embed", str(lake / "events"), *ARGS, "--output", str(ref)]) == 0
    expected = {r["entity"]: list(r["embedding"]) for r in spark.read.parquet(str(ref)).collect()}
    with default_fs_on(spark, lake):
        assert not os.path.exists("/lake")  # the driver's /lake is not where the data is
        for _ in range(2):  # the second run replaces the first run's output (its marker is recognised)
            assert main(["embed", "/lake/events", *ARGS, "--output", "/lake/emb"]) == 0
        assert main(["emde", "fit", "--embeddings", "/lake/emb", "--depth", "2", "--bits", "2",
                     "--output", "/lake/coder", "--log-level", "ERROR"]) == 0
        (lake / "new").mkdir()
        (lake / "new" / "ev.csv").write_text("user,item\nu9,a\nu9,zz\n")
        assert main(["fold-in", "--embeddings", "/lake/emb", "--events", "/lake/new", "--output", "/lake/fold",
                     "--markov", "left", "--input-format", "csv", "--hyperedge", "user", "--entity", "item",
                     "--log-level", "ERROR"]) == 0
    assert [r["entity"] for r in spark.read.parquet(str(lake / "fold")).collect()] == ["zz"]
    got = {r["entity"]: list(r["embedding"]) for r in spark.read.parquet(str(lake / "emb")).collect()}
    assert got == expected and len(got) == 3
    assert os.path.isdir(lake / "emb" / "_spark_cleora_output") and os.path.isdir(lake / "coder" / "_emde")
    assert spark.read.parquet(str(lake / "coder" / "codes")).count() == 3
    names = sorted(os.listdir(lake))
    assert not [n for n in names if ".staging-" in n or n.endswith(".spark_cleora_lock")], names
    # the work directory beside the output: emptied (no JVM handle to delete it), still marked as the tool's
    work = lake / "emb.spark_cleora_work"
    assert names == ["coder", "emb", "emb.spark_cleora_work", "events", "fold", "new"]
    assert sorted(os.listdir(work)) and not [n for n in os.listdir(work) if n.startswith(("iter=", "graph"))]


@pytest.mark.compat
def test_refused_outputs_leave_nothing_behind(spark, lake, capsys):
    mine = lake / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    (lake / "report.txt").write_text("keep me too")
    before = _tree(lake)
    with default_fs_on(spark, lake):
        cases = [
            (["embed", "/lake/events", *ARGS, "--output", "/lake/mine"], "is not an output of spark_cleora"),
            (["embed", "/lake/events", *ARGS, "--output", "/lake/events"], "overlaps the input"),
            (["embed", "/lake/events", *ARGS, "--output", "/lake/report.txt"], "is an existing file"),
            (["embed", "/lake/events", *ARGS, "--output", "/lake/o", "--work-dir", "/lake/mine"],
             "is not a spark_cleora work directory"),
            (["embed", "/lake/nope", *ARGS, "--output", "/lake/o"], "does not exist"),
            (["embed", "/lake/events", *ARGS, "--output-format", "npy", "--output", "/lake/o"],
             "writes single files through the driver"),
            (["emde", "fit", "--embeddings", "/lake/events", "--output", "/lake/mine", "--log-level", "ERROR"],
             "is not an output of spark_cleora"),
        ]
        for argv, message in cases:
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert message in err and "viewfs://" in err and err.count("\n") == 1, (argv, err)
    assert _tree(lake) == before
    assert sorted(os.listdir(lake)) == ["events", "mine", "report.txt"]
