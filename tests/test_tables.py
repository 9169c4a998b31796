"""Catalog tables and Delta: atomic table replace, a real Hive metastore round trip, Delta's writer.

The Hive round trip runs in subprocesses: the catalog implementation is fixed when a session starts
(the suite's session uses the in-memory catalog), and "read back from a new session" must really be a
new application on the same metastore (embedded Derby in a temp dir) and warehouse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_cleora.cli import build_parser, embed_config_from_args, main
from spark_cleora.config import EmbedConfig
from spark_cleora.demo import sample_path
from spark_cleora.errors import ConfigError
from spark_cleora.storage.tables import delta_available, require_delta, write_delta, write_table

EMBED_ARGS = ["--hyperedge", "user_id", "--entity", "item", "--timestamp", "ts", "--session-gap", "1800",
              "--dim", "8", "--iterations", "2"]


def _tables(spark, db: str = "default") -> list[str]:
    return sorted(t.name for t in spark.catalog.listTables(db))


def test_write_table_replaces_atomically_and_cleans_up(spark):
    spark.sql("DROP TABLE IF EXISTS atomic_t")
    v1 = spark.createDataFrame([("a", "x", 1.0), ("b", "y", 2.0)], "entity string, column string, v double")
    write_table(v1, "atomic_t", partition_by=("column",), properties={"spark_cleora.config": "{'k': 1}"})
    assert sorted(tuple(r) for r in spark.read.table("atomic_t").select("entity", "column", "v").collect()) == [
        ("a", "x", 1.0), ("b", "y", 2.0)]
    parts = {c.name for c in spark.catalog.listColumns("atomic_t") if c.isPartition}
    assert parts == {"column"}
    props = {r["key"]: r["value"] for r in spark.sql("SHOW TBLPROPERTIES atomic_t").collect()}
    assert props["spark_cleora.config"] == "{'k': 1}"

    # a replacement that fails while its rows are written leaves the old table as it was
    boom = spark.range(4).select(F.when(F.col("id") == 2, F.raise_error(F.lit("boom"))).otherwise("a").alias("entity"),
                                 F.lit("x").alias("column"), F.col("id").cast("double").alias("v"))
    with pytest.raises(Exception, match="boom"):
        write_table(boom, "atomic_t")
    assert spark.read.table("atomic_t").count() == 2
    # a stale staging table (a killed run) does not block the next replacement (nor does a location that
    # a straggler task of the failed write above may have left without a table: then the setup cannot
    # make the stale table, and the next test covers that case)
    try:
        spark.range(1).write.saveAsTable("atomic_t__spark_cleora_staging")
    except Exception as exc:
        assert "LOCATION_ALREADY_EXISTS" in str(exc)
    v2 = spark.createDataFrame([("c", "x", 3.0)], "entity string, column string, v double")
    write_table(v2, "atomic_t")
    assert [tuple(r) for r in spark.read.table("atomic_t").collect()] == [("c", "x", 3.0)]
    assert [t for t in _tables(spark) if t.startswith("atomic_t")] == ["atomic_t"]
    spark.sql("DROP TABLE atomic_t")


def test_a_staging_location_left_without_a_table_does_not_block_a_replacement(spark):
    """Files in the staging table's location with no table (a failed write's straggler): the rows are
    staged under another name, the leftover directory is not touched, the table is replaced."""
    import os
    from urllib.parse import urlparse

    spark.sql("DROP TABLE IF EXISTS atomic_u")
    warehouse = urlparse(spark.conf.get("spark.sql.warehouse.dir")).path
    leftover = os.path.join(warehouse, "atomic_u__spark_cleora_staging", "_temporary")
    os.makedirs(leftover, exist_ok=True)
    with open(os.path.join(leftover, "part"), "w") as f:
        f.write("straggler")
    v = spark.createDataFrame([("c", "x", 3.0)], "entity string, column string, v double")
    write_table(v, "atomic_u")
    assert [tuple(r) for r in spark.read.table("atomic_u").collect()] == [("c", "x", 3.0)]
    assert [t for t in _tables(spark) if t.startswith("atomic_u")] == ["atomic_u"]
    assert os.path.exists(os.path.join(leftover, "part"))  # not ours to prove: left as it was
    spark.sql("DROP TABLE atomic_u")


def test_output_options_are_validated():
    base = dict(inputs=("e.parquet",), hyperedge="u", entity="i")
    with pytest.raises(ConfigError, match="not both"):
        EmbedConfig(**base, output="o", output_table="t")
    with pytest.raises(ConfigError, match="--output-table writes parquet or delta"):
        EmbedConfig(**base, output_table="t", output_format="npy")
    with pytest.raises(ConfigError, match="partition-by .'entity'. is not allowed"):
        EmbedConfig(**base, output="o", partition_by=("entity",))
    with pytest.raises(ConfigError, match="partition-by applies to parquet/delta"):
        EmbedConfig(**base, output="o", output_format="cleora-text", partition_by=("column",))
    with pytest.raises(ConfigError, match=r"\[catalog.\]db.table"):
        EmbedConfig(**base, output_table="a..b")
    assert EmbedConfig(**base, output_table="lake.db.emb", output_format="delta").partition_by == ()


def test_output_table_flag_replaces_the_config_files_output(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[embed]\ninputs = ["a.parquet"]\nhyperedge = "u"\nentity = "i"\noutput = "out/emb"\n'
                    'partition-by = ["column"]\n')
    ns = build_parser().parse_args(["embed", "--config", str(conf), "--output-table", "lake.emb"])
    cfg = embed_config_from_args(ns)
    assert (cfg.output, cfg.output_table, cfg.partition_by) == (None, "lake.emb", ("column",))


def test_delta_missing_stops_before_embedding_with_the_fix(spark, tmp_path, capsys):
    if delta_available(spark):
        pytest.skip("this session has Delta on its classpath")
    with pytest.raises(ConfigError, match="spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension"):
        require_delta(spark)
    out = tmp_path / "emb"
    assert main(["embed", sample_path(), "--input-format", "csv", *EMBED_ARGS, "--output", str(out),
                 "--output-format", "delta"]) == 2
    assert "needs Delta Lake on the Spark classpath" in capsys.readouterr().err
    assert os.listdir(tmp_path) == [], "nothing may be written when Delta is missing"


class _Recorder:
    """Stands in for a DataFrame / DataFrameWriter / SparkSession and records the calls made on it."""

    def __init__(self, calls: list):
        self.calls = calls
        self.write = self
        self.sparkSession = self

    def __getattr__(self, name):
        def call(*args):
            self.calls.append((name, *args))
            return self
        return call


def test_delta_goes_through_sparks_own_delta_writer(monkeypatch):
    import spark_cleora.storage.tables as tables

    monkeypatch.setattr(tables, "delta_available", lambda spark: True)
    calls: list = []
    write_delta(_Recorder(calls), "s3a://lake/emb", partition_by=("column",))
    assert calls == [("format", "delta"), ("mode", "overwrite"), ("option", "overwriteSchema", "true"),
                     ("partitionBy", "column"), ("save", "s3a://lake/emb")]
    calls.clear()
    write_table(_Recorder(calls), "main.lake.emb", fmt="delta", properties={"spark_cleora.version": "0.1"})
    assert calls[:4] == [("format", "delta"), ("mode", "overwrite"), ("option", "overwriteSchema", "true"),
                         ("saveAsTable", "main.lake.emb")]  # one Delta commit replaces the table
    assert calls[4] == ("sql", "ALTER TABLE `main`.`lake`.`emb` SET TBLPROPERTIES ('spark_cleora.version' = '0.1')")
    assert len(calls) == 5, "no staging table or rename for Delta"


# --------------------------------------------------------------------------------------------
# A persistent catalog: Spark's Hive support with an embedded Derby metastore and a temp warehouse
# --------------------------------------------------------------------------------------------

SESSION = """
import json, sys
from pyspark.sql import SparkSession
root = sys.argv[1]
spark = (SparkSession.builder.master("local[2]").appName("hive catalog test")
         .config("spark.sql.catalogImplementation", "hive")
         .config("spark.sql.warehouse.dir", root + "/warehouse")
         .config("spark.hadoop.javax.jdo.option.ConnectionURL", f"jdbc:derby:;databaseName={root}/metastore;create=true")
         .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={root}")
         .config("spark.sql.shuffle.partitions", "2").config("spark.ui.enabled", "false")
         .config("spark.sql.session.timeZone", "UTC").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
assert spark.conf.get("spark.sql.catalogImplementation") == "hive"

def dump(name):
    return {r["entity"]: [r["column"], r["degree"], list(r["embedding"])] for r in spark.read.table(name).collect()}
"""

WRITE = SESSION + """
from pyspark.sql import functions as F
from spark_cleora.cli import main
from spark_cleora.storage.tables import write_table
spark.sql("CREATE DATABASE shop")
spark.read.option("header", "true").csv(sys.argv[2]).write.saveAsTable("shop.events")
args = ["embed", "--input-table", "shop.events", *json.loads(sys.argv[3]), "--output-table", "shop.item_emb",
        "--partition-by", "column"]
assert main(args) == 0
first = dump("shop.item_emb")
# a failing replacement leaves the table as it was ...
bad = spark.read.table("shop.item_emb").withColumn("entity", F.raise_error(F.lit("boom")).cast("string"))
try:
    write_table(bad, "shop.item_emb")
    raise SystemExit("expected the failing write to raise")
except Exception as exc:
    assert "boom" in str(exc), exc
assert dump("shop.item_emb") == first
# ... and a table can be replaced from its own rows: they are staged before the swap
props = {r["key"]: r["value"] for r in spark.sql("SHOW TBLPROPERTIES shop.item_emb").collect()
         if r["key"].startswith("spark_cleora.")}
write_table(spark.read.table("shop.item_emb"), "shop.item_emb", partition_by=["column"], properties=props)
print(json.dumps({"first": first, "tables": sorted(t.name for t in spark.catalog.listTables("shop"))}))
"""

READ = SESSION + """
props = {r["key"]: r["value"] for r in spark.sql("SHOW TBLPROPERTIES shop.item_emb").collect()}
parts = [c.name for c in spark.catalog.listColumns("shop.item_emb") if c.isPartition]
print(json.dumps({"rows": dump("shop.item_emb"), "props": props, "partitions": parts,
                  "tables": sorted(t.name for t in spark.catalog.listTables("shop"))}))
"""


def _run(script: str, *args: str, cwd) -> dict:
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    env.pop("SPARK_REMOTE", None)
    err_path = os.path.join(cwd, f"stderr-{abs(hash(script)) % 10**6}.log")
    with open(err_path, "w") as err:
        res = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE,
                             stderr=err, text=True, env=env, cwd=cwd, timeout=600)
    assert res.returncode == 0, open(err_path).read()[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_hive_catalog_round_trip_from_a_new_session(sample_run, tmp_path):
    root = str(tmp_path)
    assert sample_run.ARGS[:2] == ("--input-format", "csv")  # the table replaces the CSV file as input
    wrote = _run(WRITE, root, sample_path(), json.dumps(sample_run.ARGS[2:]), cwd=root)
    assert wrote["tables"] == ["events", "item_emb"], "staging/old tables must not be left behind"
    read = _run(READ, root, cwd=root)  # a new application on the same metastore and warehouse
    assert read["rows"] == wrote["first"], "read back from a new session: exactly what was written"
    assert read["partitions"] == ["column"] and read["tables"] == ["events", "item_emb"]
    cfg = json.loads(read["props"]["spark_cleora.config"])
    assert cfg["output_table"] == "shop.item_emb" and cfg["dim"] == 16
    assert os.path.isdir(os.path.join(root, "warehouse", "shop.db", "item_emb"))

    # the same numbers as the classic CLI run on the same events (read from the CSV file there)
    ref = sample_run.vectors()
    assert set(read["rows"]) == set(ref) and len(ref) == 48
    assert max(float(np.abs(np.asarray(read["rows"][k][2]) - ref[k]).max()) for k in ref) <= 1e-6
