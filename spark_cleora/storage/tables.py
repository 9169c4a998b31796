"""Catalog tables and Delta Lake outputs.

* ``write_table``: a catalog table (Hive metastore, Unity Catalog, Glue, ...), replaced atomically.
  Delta tables are replaced by one Delta commit (``saveAsTable`` in overwrite mode is a new table
  version, so readers see the old or the new rows). Other formats have no transactional replace in
  Spark's session catalog (overwriting drops the table first), so the rows are written to a staging
  table beside the target and swapped in with two metastore renames once they are complete: a failed
  write leaves the old table untouched.
* ``write_delta``: a Delta table at a path, through Spark's own Delta writer (one commit).
* ``require_delta``: Delta is a data source found on the classpath (built into Databricks; elsewhere
  the ``delta-spark`` jars and two session settings), probed without running a job so that a run fails
  before embedding, with the fix, instead of after.

Everything here is DataFrame writer and SQL calls, so it works on Spark Connect too.
"""

from __future__ import annotations

import json
import logging
import uuid
from urllib.parse import unquote
from collections.abc import Mapping, Sequence

from pyspark.sql import DataFrame, DataFrameWriter, Observation, SparkSession
from pyspark.sql import functions as F

from ..config import EmbedConfig
from ..runtime.compat import observes_writes
from ..errors import ConfigError
from .._version import __version__

log = logging.getLogger(__name__)

STAGING_SUFFIX = "__spark_cleora_staging"
OLD_SUFFIX = "__spark_cleora_old"

DELTA_HELP = (
    "--output-format delta needs Delta Lake on the Spark classpath; this session has no 'delta' data "
    "source. Databricks has it built in. Elsewhere start Spark with the delta-spark package matching "
    "your Spark version and its two settings, e.g.\n"
    "  spark-cleora embed ... --output-format delta \\\n"
    "    --conf spark.jars.packages=io.delta:delta-spark_2.13:<delta version for your Spark> \\\n"
    "    --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \\\n"
    "    --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog\n"
    "(or pip install delta-spark and build the session with delta.configure_spark_with_delta_pip), "
    "or write --output-format parquet."
)


def delta_available(spark: SparkSession) -> bool:
    """True when the session can resolve the ``delta`` data source.

    Resolving a reader of a path that does not exist fails either way; the error says whether the
    source itself was missing (``DATA_SOURCE_NOT_FOUND``) or only the path. No job runs.
    """
    probe = f"/tmp/spark_cleora_delta_probe_{uuid.uuid4().hex}"
    try:
        spark.read.format("delta").load(probe).schema  # Connect analyses lazily: .schema forces it
    except Exception as exc:  # classic raises a Py4JJavaError here, Connect a converted exception
        text = str(exc)
        return not ("DATA_SOURCE_NOT_FOUND" in text or "Failed to find the data source: delta" in text)
    return True


def require_delta(spark: SparkSession) -> None:
    """Raise :class:`ConfigError` with how to add Delta when the session cannot write it."""
    if not delta_available(spark):
        raise ConfigError(DELTA_HELP)


#: Parquet writer option: no dictionary attempt for the embedding values (float vectors never repeat, and
#: the attempt made writing a 42k x 256 output ~1.2x slower warm, ~2x on a cold JVM); strings keep theirs
NO_DICTIONARY_FOR_EMBEDDINGS = ("parquet.enable.dictionary#embedding.list.element", "false")


def _writer(df: DataFrame, fmt: str, partition_by: Sequence[str]) -> DataFrameWriter:
    w = df.write.format(fmt).mode("overwrite")
    if fmt == "parquet":
        w = w.option(*NO_DICTIONARY_FOR_EMBEDDINGS)
    if fmt == "delta":
        w = w.option("overwriteSchema", "true")  # a rerun with another dim replaces the schema too
    return w.partitionBy(*partition_by) if partition_by else w


def write_delta(df: DataFrame, path: str, *, partition_by: Sequence[str] = ()) -> None:
    """Replace the Delta table at ``path`` with ``df`` in one Delta commit."""
    _writer(df, "delta", partition_by).save(path)


def quote(name: str) -> str:
    """``a.b.c`` -> ```a`.`b`.`c``` (each part quoted, backticks doubled)."""
    return ".".join("`" + p.replace("`", "``") + "`" for p in name.split("."))


def _sibling(name: str, suffix: str) -> str:
    """A table name beside ``name`` (same namespace), as ``ALTER TABLE ... RENAME TO`` wants it."""
    parts = name.split(".")
    return ".".join([*parts[:-1], parts[-1] + suffix])


def _rename_target(name: str) -> str:
    # RENAME TO takes the new name without the catalog (it stays in the same catalog)
    return quote(".".join(name.split(".")[-2:]))


def write_table(
    df: DataFrame,
    name: str,
    *,
    fmt: str = "parquet",
    partition_by: Sequence[str] = (),
    properties: Mapping[str, str] | None = None,
) -> None:
    """Create or atomically replace the catalog table ``name`` with ``df``.

    Parameters
    ----------
    df
        The rows to write.
    name
        ``table``, ``db.table`` or ``catalog.db.table``.
    fmt
        ``parquet`` (staging table + rename swap) or ``delta`` (one Delta commit; checked with
        :func:`require_delta` first).
    partition_by
        Partition columns (low-cardinality ones only).
    properties
        Table properties recorded with the rows (e.g. the run's configuration).
    """
    spark = df.sparkSession
    props = dict(properties or {})
    if fmt == "delta":
        require_delta(spark)
        _writer(df, "delta", partition_by).saveAsTable(name)
        _set_properties(spark, name, props)
        return
    staging, old = _sibling(name, STAGING_SUFFIX), _sibling(name, OLD_SUFFIX + "_" + uuid.uuid4().hex[:8])
    spark.sql(f"DROP TABLE IF EXISTS {quote(staging)}")  # left by a killed run (one writer per table)
    try:
        try:
            _writer(df, fmt, partition_by).saveAsTable(staging)
        except Exception as exc:
            # A failed write's straggler task can leave files in the staging table's location after
            # Spark's cleanup, with no table: that directory is not removed (it has no owner to prove),
            # the rows are staged under a name of their own instead.
            if "LOCATION_ALREADY_EXISTS" not in str(exc) or spark.catalog.tableExists(staging):
                raise
            staging = _sibling(name, f"{STAGING_SUFFIX}_{uuid.uuid4().hex[:8]}")
            log.warning("the location of %s is left from a failed write; staging as %s", name, staging)
            _writer(df, fmt, partition_by).saveAsTable(staging)
        _set_properties(spark, staging, props)
    except BaseException:
        spark.sql(f"DROP TABLE IF EXISTS {quote(staging)}")
        raise
    # The swap: two metastore renames, milliseconds apart; the rows are complete before either. Until
    # the new table is fully in place (partitions included), any failure puts the old one back.
    replacing = spark.catalog.tableExists(name)
    if replacing:
        spark.sql(f"ALTER TABLE {quote(name)} RENAME TO {_rename_target(old)}")
    swapped = False
    try:
        spark.sql(f"ALTER TABLE {quote(staging)} RENAME TO {_rename_target(name)}")
        swapped = True
        if partition_by:
            _follow_renamed_partitions(spark, name)
    except BaseException:
        if swapped:  # the new rows go: they are not the promised table
            spark.sql(f"DROP TABLE IF EXISTS {quote(name)}")
        else:
            spark.sql(f"DROP TABLE IF EXISTS {quote(staging)}")
        if replacing:
            spark.sql(f"ALTER TABLE {quote(old)} RENAME TO {_rename_target(name)}")
            _follow_renamed_partitions(spark, name)  # renamed twice: its partitions too
        raise
    if replacing:
        spark.sql(f"DROP TABLE IF EXISTS {quote(old)}")
    log.info("table %s %s (%s)", name, "replaced" if replacing else "created", fmt)


def sql_string(value: str) -> str:
    """A Spark SQL string literal of ``value`` (quotes and backslashes escaped: nothing is spliced)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _location(spark: SparkSession, name: str) -> str | None:
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {quote(name)}").filter("col_name = 'Location'").collect()
    return rows[0]["data_type"] if rows else None


def _follow_renamed_partitions(spark: SparkSession, name: str) -> None:
    """Point every partition of the renamed table ``name`` at its directory under the table.

    A Hive metastore moves them with the table (nothing to do then); Spark's in-memory catalog moves
    the directory but keeps the old partition locations (re-escaped on every rename), so the renamed
    table would read as empty.
    """
    if not any(c.isPartition for c in spark.catalog.listColumns(name)):
        return
    table_at = _location(spark, name)
    if not table_at:
        return
    for row in spark.sql(f"SHOW PARTITIONS {quote(name)}").collect():  # one per input column: few
        spec = ", ".join(f"{quote(unquote(k))} = {sql_string(unquote(v))}"
                         for k, v in (kv.split("=", 1) for kv in row[0].split("/")))
        rows = spark.sql(f"DESCRIBE TABLE EXTENDED {quote(name)} PARTITION ({spec})").filter(
            "col_name = 'Location'").collect()
        # the directory is SHOW PARTITIONS' escaped path (column=it%27em) below the table
        home = table_at.rstrip("/") + "/" + row[0]
        if not rows or rows[0]["data_type"] != home:
            spark.sql(f"ALTER TABLE {quote(name)} PARTITION ({spec}) SET LOCATION {sql_string(home)}")


def _set_properties(spark: SparkSession, name: str, props: Mapping[str, str]) -> None:
    if not props:
        return

    pairs = ", ".join(f"{sql_string(k)} = {sql_string(v)}" for k, v in props.items())
    spark.sql(f"ALTER TABLE {quote(name)} SET TBLPROPERTIES ({pairs})")


def default_table_work_dir(spark: SparkSession, name: str) -> str:
    """Where a run writing the table ``name`` keeps its iterations by default: the warehouse dir."""
    warehouse = spark.conf.get("spark.sql.warehouse.dir", "spark-warehouse") or "spark-warehouse"
    return f"{warehouse.rstrip('/')}/{name}.spark_cleora_work"


def write_output(emb: DataFrame, cfg: EmbedConfig, target: str) -> int:
    """Write the embed job's rows as ``cfg`` says (Parquet/Delta at a path, or a table); return the count.

    ``target`` is the staging directory for a Parquet path (the caller renames it into place), the
    path itself for Delta (its commit is the atomic step), or the table name.
    """
    spark = emb.sparkSession
    fmt, parts = cfg.output_format, cfg.partition_by
    if cfg.output_table:
        props = {"spark_cleora.version": __version__, "spark_cleora.config": json.dumps(cfg.to_dict(), sort_keys=True)}
        write_table(emb, target, fmt=fmt, partition_by=parts, properties=props)
        return spark.read.table(target).count()
    if fmt == "delta":
        write_delta(emb, target, partition_by=parts)
        return spark.read.format("delta").load(target).count()
    if not observes_writes(spark):
        _writer(emb, "parquet", parts).save(target)
        return spark.read.parquet(target).count()
    # the rows are counted as they are written (successful tasks only): no read of the output afterwards
    written = Observation("spark_cleora_written")
    _writer(emb.observe(written, F.count(F.lit(1)).alias("rows")), "parquet", parts).save(target)
    rows = written.get.get("rows")
    return int(rows) if rows is not None else spark.read.parquet(target).count()
