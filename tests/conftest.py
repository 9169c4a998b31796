"""Shared fixtures: one local Spark session for the whole run (GraphFrames/dbldatagen style)."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest
from helpers import SampleRun


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:  # e.g. a Databricks cluster running the suite
        yield active
        return
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # SPARK_CLEORA_TEST_MODE=connect: the whole suite on a local Spark Connect server (as Databricks
    # serverless runs it); the default suite runs its key end-to-end cases on Connect in test_connect.py.
    connect = os.environ.get("SPARK_CLEORA_TEST_MODE", "classic") == "connect"
    with tempfile.TemporaryDirectory(prefix="spark_cleora_tests_") as tmp:
        session = (
            (SparkSession.builder.remote("local[2]") if connect else SparkSession.builder.master("local[2]"))
            .appName("spark_cleora tests")
            .config("spark.sql.shuffle.partitions", "4")
            .config("spark.default.parallelism", "4")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .config("spark.checkpoint.dir", os.path.join(tmp, "checkpoints"))
            .config("spark.sql.warehouse.dir", os.path.join(tmp, "warehouse"))
            .config("spark.driver.memory", "4g")
            .getOrCreate()
        )
        if not connect:
            session.sparkContext.setLogLevel("ERROR")
        yield session
        session.stop()


@pytest.fixture
def shuffle_partitions(spark):
    """Set spark.sql.shuffle.partitions for one test and restore it afterwards."""
    old = spark.conf.get("spark.sql.shuffle.partitions")

    def set_(n: int) -> None:
        spark.conf.set("spark.sql.shuffle.partitions", str(n))

    yield set_
    spark.conf.set("spark.sql.shuffle.partitions", old)


@pytest.fixture(scope="session")
def sample_run(spark, tmp_path_factory):
    from spark_cleora.cli import main
    from spark_cleora.demo import sample_path

    out = str(tmp_path_factory.mktemp("sample_run") / "emb")
    assert main(["embed", sample_path(), *SampleRun.ARGS, "--output", out]) == 0
    return SampleRun(spark, out)
