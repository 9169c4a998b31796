"""Parquet read and written by the one task that uses it, not through Spark's reader and writer.

The one-task engine holds the whole graph and output in one Python worker. Handing the output rows to
Spark's Parquet writer costs a conversion from Arrow to Spark rows and a writer that takes
``array<float>`` value by value: ~9 s of a 10M-event run for its 386k x 256 output on 2 cores, where
pyarrow writes the same file in under a second. Reading the graph's blocks through Spark costs the way
back (Parquet to rows to Arrow), ~2 s there. So when the workers see the files as the driver does, the
task reads the blocks and writes the output itself with pyarrow.

That is the case on a local Spark whose JVM spark_cleora started (:func:`workers_share_local_files`):
the workers are processes of this machine. The output must be an unpartitioned Parquet directory at a
local path (written to a staging directory that the job renames into place once the run's checks
pass), in a codec pyarrow writes as Spark does (snappy, zstd, gzip or none) and without
``spark.sql.parquet.writeLegacyFormat``; the blocks, a complete output in a local work directory
whose codec pyarrow reads. The graph build's tasks write those blocks themselves too, one file per
block (:func:`spark_cleora.engine.graph.build_blocks_in_tasks`): the share rows and plans of 10M events
through Spark's writer cost ~2 s more in a fresh JVM. Anything else (a cluster, Spark Connect, a
notebook's session, a table, Delta, partitioned output) keeps Spark's reader and writer, as does
``spark.cleora.taskParquet.enabled=false``. The file holds the same values and schema as Spark's;
Spark's writer settings that shape files rather than values (``maxRecordsPerFile``, the row group size,
dictionaries) are not reproduced: one file, row groups of ~128 MiB, dictionaries for the names only.

Driver side: :func:`workers_share_local_files`, :func:`task_parquet_target`, :func:`readable_by_task`,
:func:`check_task_parquet`, :func:`check_task_files`. Executor side: :func:`write_task_parquet`,
:func:`read_task_parquet`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

#: Spark's ``spark.sql.parquet.compression.codec`` values that pyarrow writes the same way, and the
#: file name part Spark gives them
_CODECS = {"snappy": ("snappy", ".snappy"), "zstd": ("zstd", ".zstd"), "gzip": ("gzip", ".gz"),
           "none": ("none", ""), "uncompressed": ("none", "")}
#: ``false`` keeps Spark's writer everywhere (a switch for comparisons and for a reader that needs
#: Spark's own footer metadata)
ENABLED_CONF = "spark.cleora.taskParquet.enabled"
#: a row group's size: Spark's (``parquet.block.size``, 128 MiB), so readers split the file as they
#: would split Spark's
ROW_GROUP_BYTES = 128 * 2**20
#: columns written with a dictionary: the names (Spark's writer tries one on every column; float
#: vectors never repeat, see ``tables.NO_DICTIONARY_FOR_EMBEDDINGS``)
_DICTIONARY_COLUMNS = ("entity", "column")


@dataclass(frozen=True)
class TaskParquetTarget:
    """Where and how a task writes its rows: a local directory (the job's staging directory, created
    if missing), a pyarrow codec (one of ``snappy``, ``zstd``, ``gzip``, ``none``) and the write's id,
    chosen on the driver, that names the part file (a retried task replaces its attempt's file)."""

    directory: str
    compression: str = "snappy"
    write_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        if not os.path.isabs(self.directory):
            raise ValueError(f"TaskParquetTarget.directory must be absolute, got {self.directory!r}")
        if self.compression not in {codec for codec, _ in _CODECS.values()}:
            raise ValueError(f"TaskParquetTarget.compression: unknown codec {self.compression!r}")
        if not self.write_id or "/" in self.write_id or self.write_id.startswith("."):
            raise ValueError(f"TaskParquetTarget.write_id: not a file name part: {self.write_id!r}")

    @property
    def file_name(self) -> str:
        """The part file, named as Spark names its own."""
        ext = next(e for codec, e in _CODECS.values() if codec == self.compression)
        return f"part-00000-{self.write_id}-c000{ext}.parquet"


def workers_share_local_files(spark: Any) -> bool:
    """Whether a task may read and write this machine's local files as the driver does: a session
    whose JVM spark_cleora started for a local master
    (:data:`~spark_cleora.runtime.session.EMBEDDED_LOCAL_CONF`; not Connect, not a notebook's or
    ``spark-submit``'s session), unless :data:`ENABLED_CONF` is ``false``."""
    from ..runtime.session import conf_value, is_embedded_local

    return is_embedded_local(spark) and (conf_value(spark, ENABLED_CONF) or "true").lower() != "false"


def task_parquet_target(spark: Any, *, output_format: str, partition_by: tuple[str, ...] | list[str],
                        table: bool, target: str) -> TaskParquetTarget | None:
    """The target a task may write ``target``'s Parquet to itself, or None for Spark's writer.

    Yes only for an unpartitioned Parquet directory at a local path, when
    :func:`workers_share_local_files`, with a compression codec pyarrow writes and without
    ``spark.sql.parquet.writeLegacyFormat``.
    """
    from .paths import local_path

    lp = local_path(target)
    if table or output_format != "parquet" or partition_by or lp is None:
        return None
    if not workers_share_local_files(spark):
        return None
    from ..runtime.session import conf_value

    if (conf_value(spark, "spark.sql.parquet.writeLegacyFormat") or "false").lower() == "true":
        return None
    codec = spark_parquet_codec(spark)
    return None if codec is None else TaskParquetTarget(os.path.abspath(lp), codec)


def spark_parquet_codec(spark: Any) -> str | None:
    """The session's Parquet codec (``spark.sql.parquet.compression.codec``) as pyarrow names it, or
    None for one this module leaves to Spark (lz4, brotli, lzo: Hadoop's framings and libraries)."""
    from ..runtime.session import conf_value

    codec = _CODECS.get((conf_value(spark, "spark.sql.parquet.compression.codec") or "snappy").lower())
    return None if codec is None else codec[0]


def write_task_parquet(target: TaskParquetTarget, batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> int:
    """Write ``batches`` (``schema``) as one Parquet file in ``target.directory``, named as Spark names
    its part files; return the rows written. Runs in the task.

    The file is written under a hidden name of this attempt's own (readers skip names starting with
    ``.``) and renamed to ``target.file_name`` when complete: an attempt that dies leaves no partial
    part file, and a retried task replaces the file of an attempt that completed it (one file, never
    two copies of the rows).
    """
    import pyarrow.parquet as pq

    os.makedirs(target.directory, exist_ok=True)  # (as Spark's writer does: the staging directory is new)
    final = os.path.join(target.directory, target.file_name)
    partial = os.path.join(target.directory, f".{target.file_name}.{uuid.uuid4().hex[:8]}.inprogress")
    written = 0
    group: list[pa.RecordBatch] = []
    rows_in_group = 0
    rows_per_group = 0
    try:
        with pq.ParquetWriter(partial, schema, compression=target.compression,
                              use_dictionary=[c for c in _DICTIONARY_COLUMNS if c in schema.names]) as writer:
            for batch in batches:
                if not rows_per_group and batch.num_rows:  # sized from the first rows (the vectors dominate)
                    rows_per_group = max(1, ROW_GROUP_BYTES * batch.num_rows // max(1, batch.nbytes))
                group.append(batch)
                rows_in_group += batch.num_rows
                if rows_in_group >= rows_per_group:
                    writer.write_table(pa.Table.from_batches(group, schema), row_group_size=rows_in_group)
                    written += rows_in_group
                    group, rows_in_group = [], 0
            if group or not written:  # (an empty output is still a file with the schema)
                writer.write_table(pa.Table.from_batches(group, schema), row_group_size=max(1, rows_in_group))
                written += rows_in_group
        os.replace(partial, final)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return written


def read_task_parquet(directory: str, columns: list[str], *, where: Any = None) -> pa.Table:
    """A Parquet directory written by Spark (part files; ``_SUCCESS`` and hidden checksums skipped),
    ``columns`` only, the rows matching the ``pyarrow.dataset`` expression ``where``. Runs in the task."""
    import pyarrow.dataset as ds

    return ds.dataset(directory, format="parquet").to_table(columns=columns, filter=where)


#: Parquet codecs pyarrow reads (footer names); Spark may also write LZO, which it does not
_READABLE_CODECS = {"UNCOMPRESSED", "SNAPPY", "GZIP", "ZSTD", "LZ4", "LZ4_RAW", "BROTLI"}


def readable_by_task(directory: str) -> bool:
    """Whether :func:`read_task_parquet` can read this complete local Spark output: its part files'
    codecs, from the first file's footer (a run writes every file of a directory with one codec)."""
    import pyarrow.parquet as pq

    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".parquet") and not n.startswith((".", "_")))
        if not names:
            return False
        meta = pq.ParquetFile(os.path.join(directory, names[0])).metadata
        return all(meta.row_group(g).column(c).compression in _READABLE_CODECS
                   for g in range(meta.num_row_groups) for c in range(meta.num_columns))
    except (OSError, pa.ArrowException):
        return False


def check_task_parquet(target: TaskParquetTarget, written: int) -> None:
    """On the driver, after the task reported ``written`` rows: :func:`check_task_files` for its one
    part file."""
    check_task_files(target.directory, {target.file_name: written})


def check_task_files(directory: str, written: dict[str, int]) -> None:
    """On the driver, after the tasks reported the part files they wrote (``written``: name -> rows):
    leave exactly those part files in ``directory`` (partial files of attempts that were killed before
    they could remove theirs are deleted) and check that each file's footer counts its rows; a
    RuntimeError otherwise (a file lost or left over: the directory is not the job's result)."""
    import pyarrow.parquet as pq

    for name in os.listdir(directory):
        if name.startswith(".") and name.endswith(".inprogress") and any(name.startswith(f".{f}.") for f in written):
            os.remove(os.path.join(directory, name))
    parts = sorted(n for n in os.listdir(directory) if n.endswith(".parquet"))
    if parts != sorted(written):
        raise RuntimeError(f"{directory} holds the part files {parts}, not the ones its tasks wrote {sorted(written)}")
    for name, want in written.items():
        rows = pq.ParquetFile(os.path.join(directory, name)).metadata.num_rows
        if rows != want:
            raise RuntimeError(f"a task reported {want} rows written to {name}, the file holds {rows}")
