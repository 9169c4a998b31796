"""Shared fixtures: one local Spark session for the whole run (GraphFrames/dbldatagen style)."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/oracle.py


@pytest.fixture(scope="session")
def spark():
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:  # e.g. a Databricks cluster running the suite
        yield active
        return
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    with tempfile.TemporaryDirectory(prefix="spark_cleora_tests_") as tmp:
        session = (
            SparkSession.builder.master("local[2]")
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
