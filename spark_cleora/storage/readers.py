"""Reading inputs and writing results atomically (parquet, npy, Cleora text)."""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ..config import EmbedConfig
from ..errors import ConfigError
from ..engine.work_store import local_path

log = logging.getLogger(__name__)


def read_events(spark: SparkSession, cfg: EmbedConfig) -> DataFrame:
    """An event table from Parquet, CSV/TSV (with a header row) or a catalog table."""
    if not cfg.inputs:
        raise ConfigError("no input given")
    fmt = cfg.input_format
    if fmt == "table":
        return spark.read.table(cfg.inputs[0])
    inputs = qualified_inputs(spark, cfg.inputs)
    check_local_inputs(inputs, fmt)
    if fmt == "parquet":
        return spark.read.parquet(*inputs)
    return read_csv(spark, inputs, sep=cfg.csv_delimiter or ("\t" if fmt == "tsv" else ","))


def qualified_inputs(spark: SparkSession, paths: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Input paths as Spark resolves them (see :func:`spark_cleora.storage.filesystem.qualify`): a scheme-less
    path on a non-local default filesystem is not looked for on the driver's disk."""
    from .filesystem import qualify

    return tuple(qualify(spark, p) for p in paths)


#: the charset the CSV files are decoded with: one character per byte, so every byte survives (see read_csv)
_BYTES = "ISO-8859-1"


def read_csv(spark: SparkSession, paths: tuple[str, ...] | list[str], *, sep: str = ",") -> DataFrame:
    """CSV/TSV files with a header row, as RFC 4180 reads them, every value a string holding the file's bytes.

    * Quoting (RFC 4180): a quoted field may hold the separator, a newline (kept in the value) and a
      doubled quote (``"q""uote"`` is ``q"uote``); a backslash is an ordinary character. Quoted newlines
      make each file one task (``multiLine``): a line break cannot be found without reading from the start.
    * Encoding: the files are UTF-8, but Spark's UTF-8 decoding would turn every invalid byte sequence into
      U+FFFD, silently merging ``a\\xff`` and ``a\\xfe``. So they are decoded byte for byte (ISO-8859-1, in
      which the separator, quote and newline are the same bytes as in UTF-8) and each value is turned back
      into its bytes and read as UTF-8 without replacement: valid values are exactly the UTF-8 text, an
      invalid one stays invalid, and the events rules count it as ``invalid_utf8`` (a genuine U+FFFD in the
      file is valid and kept). The header's names are decoded the same way (a UTF-8 byte-order mark is
      dropped).
    """
    raw = (spark.read.option("header", "true").option("sep", sep.encode("utf-8").decode(_BYTES)).option("encoding", _BYTES)
           .option("quote", '"').option("escape", '"').option("multiLine", "true").option("mode", "PERMISSIVE")
           .csv(list(paths)))
    out = []
    for i, name in enumerate(raw.columns):
        try:
            real = name.encode(_BYTES).decode("utf-8")
        except UnicodeError:
            raise ConfigError(f"CSV header column {i + 1} ({name!r}) is not valid UTF-8") from None
        if i == 0:
            real = real.removeprefix("\ufeff")
        out.append(F.encode(F.col(f"`{name.replace('`', '``')}`"), _BYTES).cast("string").alias(real))
    return raw.select(*out)


def read_cleora_text(spark: SparkSession, cfg: EmbedConfig) -> DataFrame:
    """Cleora's text input: one line = one hyperedge (``value`` column)."""
    if not cfg.inputs:
        raise ConfigError("no input given")
    inputs = qualified_inputs(spark, cfg.inputs)
    check_local_inputs(inputs, "cleora-tsv")
    return spark.read.option("lineSep", "\n").text(list(inputs))


#: above this many files the footers are left to Spark (one job reads them in parallel)
FOOTER_FILES_MAX = 2_000


def parquet_footer_rows(inputs: tuple[str, ...] | list[str]) -> int | None:
    """Rows of local Parquet inputs from their footers, read here; None when Spark should count (a
    non-local path, a glob, too many files, an unreadable footer).

    ``count()`` on Parquet also only reads footers, but as a Spark job: about a second on a small
    local run, spent before the graph build can start. Files are the ones Spark reads: data files
    below the paths, skipping names that start with ``_`` or ``.`` (``_SUCCESS``, ``_delta_log``,
    staging directories).
    """
    import pyarrow.parquet as pq

    files = _local_parquet_files(inputs)
    if files is None:
        return None
    try:
        return sum(pq.read_metadata(f).num_rows for f in files)
    except Exception:  # not Parquet after all, or unreadable: Spark's count will say what is wrong
        log.debug("reading Parquet footers failed; Spark counts instead", exc_info=True)
        return None


def _local_parquet_files(inputs: tuple[str, ...] | list[str]) -> list[str] | None:
    """The data files Spark reads below local Parquet inputs (skipping ``_``/``.`` names), or None when
    that cannot be known here (a remote path, a glob, a missing path, too many files)."""
    files: list[str] = []
    for p in inputs:
        lp = local_path(p)
        if lp is None or any(c in lp for c in "*?[{") or not os.path.exists(lp):
            return None
        if os.path.isfile(lp):
            files.append(lp)
            continue
        for d, dirs, names in os.walk(lp):
            dirs[:] = [x for x in dirs if not x.startswith(("_", "."))]
            files.extend(os.path.join(d, f) for f in names if not f.startswith(("_", ".")))
            if len(files) > FOOTER_FILES_MAX:
                return None
    return files


def check_parquet_inputs(inputs: tuple[str, ...] | list[str], what: str = "input") -> None:
    """Refuse, before Spark starts, local Parquet inputs Spark cannot read as one table: files whose
    column types disagree, duplicate column names, nanosecond timestamps (pandas' default)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..errors import BadInputError

    files = _local_parquet_files(inputs)
    if not files:
        return
    def kind(t: pa.DataType) -> str:  # widths of one kind are Spark's to reconcile; kinds are not
        for name, test in (("integer", pa.types.is_integer), ("floating", pa.types.is_floating),
                           ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x))):
            if test(t):
                return name
        return str(t)

    types: dict[str, tuple[pa.DataType, str]] = {}
    for f in files:
        try:
            schema = pq.read_schema(f)
        except Exception:  # not Parquet: Spark's own error says so
            return
        names = schema.names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise BadInputError(f"{what} {f!r} has duplicate column name(s) {dup}; rename them")
        for field in schema:
            if pa.types.is_timestamp(field.type) and field.type.unit == "ns":
                raise BadInputError(
                    f"{what} {f!r}: column {field.name!r} holds nanosecond timestamps, which Spark cannot read; "
                    "write the Parquet with microseconds (pandas: to_parquet(..., coerce_timestamps='us', "
                    "allow_truncated_timestamps=True))")
            seen = types.setdefault(field.name, (field.type, f))
            if kind(seen[0]) != kind(field.type):
                raise BadInputError(
                    f"{what}: column {field.name!r} is {seen[0]} in {seen[1]!r} but {field.type} in {f!r}; "
                    "rewrite the files with one type per column")


def check_local_inputs(inputs: tuple[str, ...], fmt: str) -> None:
    """A missing local input (not a glob) is a usage error, found before Spark starts."""
    if fmt == "table":
        return
    for p in inputs:
        lp = local_path(p)
        if lp is not None and not any(c in lp for c in "*?[") and not os.path.exists(lp):
            raise ConfigError(f"input {p!r} does not exist")


# --------------------------------------------------------------------------------------------
# Atomic output
# --------------------------------------------------------------------------------------------

def write_atomically(target: str, write: Callable[[str], None]) -> None:
    """Write into a staging directory beside ``target`` and move it into place only when complete.

    On a local filesystem the final step is a rename, so readers see the old result or the new one,
    never a partial directory. On other stores (object stores, or HDFS as the session's default
    filesystem: no rename is reachable without a JVM handle) ``target`` is written in place: a previous
    output there is first emptied and marked as an unfinished output of the tool (so a run that dies
    leaves a directory the next run may replace), and the markers written last (``_SUCCESS``, the output
    marker, EMDE's ``_emde``) are the completion signal.

    Callers check ``target`` first (:func:`spark_cleora.storage.outputs.check_output_dir`) and hold its lock
    (:func:`spark_cleora.storage.outputs.output_lock`): what is replaced here is a previous output of the tool,
    and staging directories beside it are a dead run's.
    """
    from ..errors import RefusedError
    from .outputs import check_output_dir

    lp = local_path(target)
    if lp is None:
        _write_in_place(target, write)
        return
    check_output_dir(target)  # again, just before replacing: the path may have changed since the start
    lp = os.path.abspath(lp)
    parent = os.path.dirname(lp) or "."
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(lp)
    for stale in glob.glob(os.path.join(parent, glob.escape(base) + ".staging-*")):
        # left by a killed run (the caller holds the output's lock: no live run writes it)
        log.info("removing stale staging directory %s", stale)
        shutil.rmtree(stale, ignore_errors=True)
    staging = os.path.join(parent, f"{base}.staging-{uuid.uuid4().hex[:8]}")
    try:
        write(staging)
        old = None
        if os.path.isdir(lp):
            old = os.path.join(parent, f"{base}.old-{uuid.uuid4().hex[:8]}")
            os.replace(lp, old)
        elif os.path.lexists(lp):
            raise RefusedError(f"output {target!r} is an existing file; refusing to replace it")
        os.replace(staging, lp)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


def _write_in_place(target: str, write: Callable[[str], None]) -> None:
    """:func:`write_atomically` on a store without a reachable rename (see there)."""
    from .filesystem import active_session, empty_directory, path_state
    from .outputs import check_output_dir, mark_output

    check_output_dir(target)  # again, just before replacing: the path may have changed since the start
    spark = active_session()
    if spark is not None and path_state(spark, target) == "dir":  # a previous output (checked above)
        empty_directory(spark, target)
        mark_output(target, "unfinished")
    write(target)


def write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True, default=str)
        fh.write("\n")


# --------------------------------------------------------------------------------------------
# Exports for Cleora's tools (single files, streamed through the driver without holding the data)
# --------------------------------------------------------------------------------------------

def _require_local(target: str, fmt: str) -> str:
    lp = local_path(target)
    if lp is None:
        raise ConfigError(f"--output-format {fmt} writes single files through the driver; use a local "
                          f"--output path (got {target!r}) or parquet")
    os.makedirs(lp, exist_ok=True)
    return lp


def export_npy(emb: DataFrame, target: str, *, dim: int, n_rows: int) -> None:
    """``embeddings.npy`` (float32 [n, dim]) + ``entities.json`` (row names) + ``degrees.npy``.

    Rows are streamed with ``toLocalIterator`` into a memory-mapped file, so the driver never holds the
    matrix.
    """
    lp = _require_local(target, "npy")
    mat = np.lib.format.open_memmap(os.path.join(lp, "embeddings.npy"), mode="w+", dtype=np.float32,
                                    shape=(n_rows, dim))
    deg = np.lib.format.open_memmap(os.path.join(lp, "degrees.npy"), mode="w+", dtype=np.float32,
                                    shape=(n_rows,))
    with open(os.path.join(lp, "entities.json"), "w", encoding="utf-8") as names, \
         open(os.path.join(lp, "columns.json"), "w", encoding="utf-8") as cols:
        names.write("[")
        cols.write("[")
        i = 0
        for row in emb.orderBy("entity").select("entity", "column", "degree", "embedding").toLocalIterator():
            sep = "," if i else ""
            names.write(sep + json.dumps(row["entity"], ensure_ascii=False))
            cols.write(sep + json.dumps(row["column"], ensure_ascii=False))
            mat[i] = row["embedding"]
            deg[i] = row["degree"]
            i += 1
        names.write("]\n")
        cols.write("]\n")
    if i != n_rows:
        raise RuntimeError(f"npy export wrote {i} rows, expected {n_rows}")
    mat.flush()
    deg.flush()


#: characters that end a name in Cleora's text format (Unicode White_Space, as Rust's split_whitespace)
NAME_BREAKS = r"\p{IsWhite_Space}"


def export_cleora_text(emb: DataFrame, target: str, *, dim: int, n_rows: int, file_name: str) -> None:
    """Cleora 1 text layout: a header ``N D``, then ``name occurrences v_1 … v_D`` per line.

    The format has no quoting, so a name containing whitespace (:data:`NAME_BREAKS`) is refused with a
    :class:`ConfigError` (the staging directory is discarded; nothing is replaced).

    Lines are formatted on the executors (shortest round-trip float32, like Cleora's ryu) and streamed
    to one file on the driver.
    """
    lp = _require_local(target, "cleora-text")
    fmt = F.udf(lambda v: " ".join(str(np.float32(x)) for x in v), "string")
    lines = emb.orderBy("entity").select(
        F.concat_ws(" ", "entity", F.col("occurrences").cast("long").cast("string"), fmt("embedding")).alias("l"),
        F.col("entity").rlike(NAME_BREAKS).alias("bad"), "entity",
    )
    with open(os.path.join(lp, file_name), "w", encoding="utf-8") as fh:
        fh.write(f"{n_rows} {dim}\n")
        for row in lines.toLocalIterator():
            if row["bad"]:  # the format has no escape: such a name would read back as other fields or lines
                raise ConfigError(f"entity {row['entity']!r} contains whitespace, which the cleora-text format "
                                  "cannot hold (names and values are separated by spaces, rows by newlines); "
                                  "use --output-format parquet or npy")
            fh.write(row["l"] + "\n")


# --------------------------------------------------------------------------------------------
# Reading an embeddings output back (similar, inspect, notebooks)
# --------------------------------------------------------------------------------------------

EMBEDDING_COLUMNS = ("entity", "embedding")


def read_embeddings(spark: SparkSession, source: str) -> DataFrame:
    """The Parquet output of ``spark-cleora embed`` (a directory or a path URI), or a catalog table.

    ``source`` is read as a table when it is not an existing local path and looks like a table name
    (``db.table`` or ``catalog.db.table``); npy/cleora-text exports are refused with the fix.
    """
    from pyspark.errors import AnalysisException

    from .filesystem import exists, qualify

    if "/" in source or not _looks_like_table(source):
        source = qualify(spark, source)
    elif qualify(spark, source) != source and exists(spark, qualify(spark, source)):
        source = qualify(spark, source)  # a relative directory on the default filesystem, not a table
    lp = local_path(source)
    if lp is not None and not os.path.exists(lp):
        if not _looks_like_table(source):
            raise ConfigError(f"embeddings {source!r} do not exist")
        try:
            df = spark.read.table(source)
            df.columns  # Connect resolves lazily: make a missing table fail here
        except AnalysisException as exc:
            raise ConfigError(f"embeddings {source!r}: no such directory or table") from exc
    else:
        if lp is not None and (os.path.exists(os.path.join(lp, "embeddings.npy"))
                               or glob.glob(os.path.join(glob.escape(lp), "emb__*.out"))):
            raise ConfigError(f"{source!r} is an npy/cleora-text export; point at the Parquet output "
                              "(spark-cleora embed --output-format parquet)")
        df = spark.read.parquet(source)
    missing = [c for c in EMBEDDING_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"{source!r} has no column(s) {missing}; expected the embed output "
                          "(entity, column, degree, occurrences, embedding)")
    return df


def _looks_like_table(name: str) -> bool:
    parts = name.split(".")
    return "/" not in name and 1 <= len(parts) <= 3 and all(p.replace("_", "").isalnum() for p in parts if p)
